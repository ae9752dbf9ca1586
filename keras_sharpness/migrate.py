"""Files written by earlier versions, read as today's.

Two rules, both applied by `upgrade` to every JSON file the project reads
(`keras_sharpness.io.read_json`) and, for the first, to every saved BatchNorm
layer, so old run directories, records and checkpoints keep loading
unchanged:

* Earlier versions named the BatchNorm-at-evaluation choice in several ways;
  it is ``bn_eval`` everywhere now (`LEGACY_KEYS`).
* Earlier versions had two sharpness record schemas: the experiments stored
  `SharpnessResult` dicts with the value under ``phi``. There is one schema
  now (`keras_sharpness.measure`), the value under ``sharpness``: an old
  record (a dict with ``phi``, ``eps`` and ``subspace_dim``) and an old
  ``per_start`` entry (``phi`` beside ``start``) have ``phi`` renamed
  (`LEGACY_RECORD_KEYS`); their other fields already have today's names.

Two files of earlier run directories are read as today's (`keras_sharpness.runs.RunDir`):

* ``experiment.json``, the identity an experiment's work directory recorded
  before run directories had one manifest, is read as a ``run.json`` of that
  experiment's ``kind`` (`legacy_manifest`); a ``run.json`` without ``kind``
  is an SB/LB run directory's (`upgrade_manifest`).
* ``*measurements.json``, the JSON memos in which experiments kept a model's
  accuracy and sharpness records before every measurement went to the record
  store, are moved into the store (`adopt_memo`) when their key matches the
  measurement asked for, so finished measurements are reused, not redone.

To rewrite old files in place:

    python -m keras_sharpness.migrate results/ ~/runs/old_workdir
"""

import pathlib
import sys

#: Old key -> today's key. The only place the old names remain.
LEGACY_KEYS = {"bn_mode": "bn_eval", "eval_statistics": "bn_eval", "bn_semantics": "bn_eval"}

#: Old key of a sharpness record (and of its ``per_start`` entries) -> today's.
LEGACY_RECORD_KEYS = {"phi": "sharpness"}


def upgrade(value, *, _per_start=False):
    """`value` (parsed JSON) with every legacy key renamed, at any depth."""
    if isinstance(value, dict):
        value = {LEGACY_KEYS.get(k, k): upgrade(v, _per_start=k == "per_start")
                 for k, v in value.items()}
        if _is_old_record(value, _per_start):
            value = {LEGACY_RECORD_KEYS.get(k, k): v for k, v in value.items()}
        return value
    if isinstance(value, list):
        return [upgrade(v, _per_start=_per_start) for v in value]
    return value


def _is_old_record(value, per_start_entry):
    """A sharpness record (or, in a ``per_start`` list, one start's entry) of
    the old schema: its value under an old name, not under today's."""
    if not any(old in value and new not in value for old, new in LEGACY_RECORD_KEYS.items()):
        return False
    return (per_start_entry and "start" in value) or ("eps" in value and "subspace_dim" in value)


def needs_upgrade(value):
    """Whether `upgrade` would change `value` (a legacy key anywhere)."""
    return upgrade(value) != value


def migrate_files(paths, echo=print):
    """Rewrites every ``*.json`` at or under `paths` that holds a legacy key.

    Returns:
        The list of rewritten files.
    """
    import json

    from keras_sharpness import io

    changed = []
    for root in map(pathlib.Path, paths):
        files = [root] if root.is_file() else sorted(root.rglob("*.json"))
        for path in files:
            try:
                value = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # not ours to fix: reading it will name the problem
            if needs_upgrade(value):
                io.write_json(path, upgrade(value))
                changed.append(path)
                echo(f"migrated {path}")
    echo(f"{len(changed)} file(s) migrated")
    return changed


#: What an experiment's work directory recorded before ``run.json``.
LEGACY_MANIFEST = "experiment.json"


def upgrade_manifest(record):
    """A ``run.json`` of any version with today's fields: one without ``kind``
    was written by a version whose only manifests were those of SB/LB run
    directories (`keras_sharpness.training.KIND`)."""
    if "kind" in record:
        return record
    from keras_sharpness.training import KIND

    return {"kind": KIND, **record}


def legacy_manifest(folder):
    """The manifest of a directory that has only an ``experiment.json`` (else None).

    Returns:
        ``{"kind": <experiment>, "settings": <the recorded identity>}``: the
        manifest today's experiments write, so the identity compares equal.
    """
    from keras_sharpness import io

    path = pathlib.Path(folder) / LEGACY_MANIFEST
    if not path.is_file():
        return None
    identity = io.read_json(path)
    return {"kind": identity.get("experiment"), "settings": identity, "status": None}


def adopt_memo(path, key, parts, settings, store, *, network=None, dataset=None):
    """Moves the measurements of an old JSON memo into the record store.

    A memo (``{"key": ..., "value": ...}``) kept the accuracy and the
    sharpness records of one or more models, valid while its key matched.
    Where `key` matches, every model's accuracy and records are stored as
    records of `keras_sharpness.measure` (keyed with the checkpoint's SHA-256
    and today's key fields) unless the store has them already; the memo stays.

    Args:
        path: the memo (nothing happens if it does not exist or is unreadable).
        key: the memo key the measurement would have used (JSON-ready).
        parts: ``{name: Subject}``: the model measured under ``value[name]``
            (None: the value itself); subjects need a model and a checkpoint.
        settings: the `MeasureSettings` the memo was made with.
        store: path of the record store.
        network, dataset: context for the records.

    Returns:
        The number of records added.
    """
    import json

    from keras_sharpness import io, measure
    from keras_sharpness.errors import CheckpointError

    path = pathlib.Path(path)
    if not path.is_file():
        return 0
    try:
        memo = io.read_json(path)
    except CheckpointError:
        return 0
    if not isinstance(memo, dict) or memo.get("key") != json.loads(
            json.dumps(key, default=io._jsonable)):
        return 0
    added = 0
    store = measure.record_store(store)
    with store.open():
        for name, subject in parts.items():
            measured = memo.get("value") if name is None else (memo.get("value") or {}).get(name)
            if not isinstance(measured, dict):
                continue
            digest = io.sha256(subject.checkpoint)
            bn_eval = measure._bn_eval_of(subject.model, settings.bn_eval)
            context = {"network": network or subject.model.name,
                       "checkpoint": str(subject.checkpoint), "dataset": dataset}
            records = []
            if all(k in measured for k in measure.ACCURACY_FIELDS):
                records.append({**measure.accuracy_key(settings, model=subject.label,
                                                       checkpoint_sha256=digest, bn_eval=bn_eval),
                                **context, **{k: measured[k] for k in measure.ACCURACY_FIELDS},
                                "versions": None})
            for old in measured.get("sharpness") or []:
                records.append(_sharpness_record(old, settings, subject.label, digest, bn_eval,
                                                 context))
            for record in records:
                if not store.find(measure.record_key(record)):
                    store.put(record)
                    added += 1
    return added


def _sharpness_record(old, settings, label, digest, bn_eval, context):
    """A memo's sharpness record (`SharpnessResult` fields, upgraded on read)
    in today's schema, keyed as `keras_sharpness.measure.sweep` keys it."""
    from keras_sharpness import measure

    values = dict(old)
    for name in measure.RECORD_KEY + ("measure",):
        values.pop(name, None)
    best_start = values.pop("best_start", old.get("start"))
    num_train_samples = values.pop("num_train_samples", old.get("num_samples"))
    return {**measure._key_fields(settings, model=label, checkpoint_sha256=digest,
                                  subspace_dim=old["subspace_dim"], eps=old["eps"],
                                  bn_eval=bn_eval),
            **context, "hessian_top": old.get("hessian_top", []),
            "hessian_trace": old.get("hessian_trace"), "versions": old.get("versions"),
            **values, "num_train_samples": num_train_samples, "best_start": best_start,
            "per_start": old.get("per_start")}


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m keras_sharpness.migrate PATH [PATH ...]")
    migrate_files(sys.argv[1:])
