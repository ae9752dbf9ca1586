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


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m keras_sharpness.migrate PATH [PATH ...]")
    migrate_files(sys.argv[1:])
