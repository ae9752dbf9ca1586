"""Metric 2.1 of models, measured one way: one sweep, one record schema.

Every sharpness number of the project, from ``compute_sharpness.py`` and from
every experiment (trials, sensitivity, batch sweep, warm start, trajectory),
is made by `sweep` and kept as a record of one schema (`make_record`), a
plain dict:

* what identifies it (`RECORD_KEY`): ``model`` (a label), ``checkpoint_sha256``
  (None for a model that exists only in memory), ``eps``, ``subspace_dim``,
  ``maxiter``, ``seed``, ``start`` (one start rule, or several separated by
  commas), ``bn_eval`` (the BatchNorm choice f used; ``"none"`` without
  BatchNorm), ``batch_size``, ``num_samples`` (the requested subset of the
  training set, None for all of it) and ``subspace_scale`` (``"identity"``
  in the full space);
* the value: ``sharpness`` (phi of Metric 2.1, in % of 1 + f0, after all
  ``maxiter`` iterations) and ``phi_paper`` (phi after the paper's 10
  iterations; None for runs of fewer);
* the solver's story (`keras_sharpness.metric.SharpnessResult`): ``f0``,
  ``fmax``, ``f_final``, ``p``, ``num_params``, ``iterations``,
  ``evaluations``, ``message``, the seconds, ``ascent``, ``converged``,
  ``solver_options``, ``num_train_samples``, ``best_start`` and ``per_start``
  (with several starts, each one's ``start``, ``sharpness``, ``phi_paper``,
  ``iterations`` and ``message``; else None);
* context: ``network``, ``checkpoint`` (its path), ``dataset``,
  ``hessian_top``, ``hessian_trace`` and ``versions``.

Accuracy and mean cross-entropy of a model on both splits are records of the
same store (`accuracy`): ``measure`` is ``"accuracy"``, the key ``model``,
``checkpoint_sha256``, ``bn_eval`` and ``batch_size`` (the other key fields
None), the values ``train_loss``, ``train_acc``, ``test_loss``,
``test_acc``, and the same context. A record without ``measure`` is a
sharpness record.

A record store (`keras_sharpness.runs.RecordStore`, a run directory's
``sharpness.json``) is a JSON file holding a list of records. It is rewritten
atomically after every record, so an interrupted run keeps what it finished;
a later sweep reuses every stored record whose key matches (the checkpoint's
SHA-256 included, so a retrained model is measured again). Records written
by earlier versions are upgraded on read (`keras_sharpness.migrate`).

    settings = MeasureSettings(eps=(1e-3, 5e-4), subspace_dims=(0, 100))
    records = sweep([("SB", "runs/F1/sb.keras"), ("LB", "runs/F1/lb.keras")],
                    data, settings, "runs/F1/sharpness.json")
"""

import dataclasses
import functools
import os
import pathlib
import typing

from keras_sharpness.errors import CheckpointError, UserError

#: BatchNorm at evaluation: the two modes, or the mode the model was saved with.
BN_EVAL_CHOICES = ("batch", "moving", "model")

#: The fields that identify a record: a sweep with the same ones reuses it.
RECORD_KEY = ("model", "checkpoint_sha256", "eps", "subspace_dim", "maxiter", "seed",
              "start", "bn_eval", "batch_size", "num_samples", "subspace_scale")

#: `SharpnessResult` fields that a record states under a key of its own.
_RESULT_FIELDS_IN_KEY = ("eps", "subspace_dim", "maxiter", "seed", "bn_eval", "batch_size",
                         "subspace_scale")


@dataclasses.dataclass(frozen=True)
class MeasureSettings:
    """How a model is measured; validated once, recorded with every number.

    Attributes:
        eps: box scales of Metric 2.1 (paper: 1e-3 and 5e-4).
        subspace_dims: 0 for the full space (Table 3), p for a random
            p-dimensional subspace (Table 4: 100).
        maxiter: L-BFGS-B iterations (paper: 10).
        start: L-BFGS-B start rule (see `keras_sharpness.metric`), or several
            separated by commas: then the sharpness is the largest over them.
        bn_eval: BatchNorm at evaluation: ``"batch"`` (Keras 1 mode=2),
            ``"moving"``, or ``"model"`` (the mode the model was saved with).
        eval_batch_size: fixed batch size of the objective.
        num_samples: sharpness on a seeded subset of the training set (None:
            all of it, as the paper). Accuracies always use whole splits.
        seed: seed of the random subspace, the random start and the subset.
        subspace_scale: scale of a random A (``"gaussian"`` or ``"normalized"``).
        hessian_topk: also the top Hessian eigenvalues of every model (0: skip).
        hessian_trace_probes: also tr(H) by Hutchinson probes (0: skip).

    Raises:
        UserError: a setting Metric 2.1 cannot use (one line naming it).
    """

    eps: tuple = (1e-3, 5e-4)
    subspace_dims: tuple = (0, 100)
    maxiter: int = 10
    start: str = "zero"
    bn_eval: str = "batch"
    eval_batch_size: int = 1000
    num_samples: int = None
    seed: int = 0
    subspace_scale: str = "gaussian"
    hessian_topk: int = 0
    hessian_trace_probes: int = 0

    #: Fields added after results were stored, with the value those results
    #: were made with: left out of `to_dict` at that value, so stored
    #: measurements keep matching their key.
    ADDED_LATER: typing.ClassVar[dict] = {"subspace_scale": "gaussian", "hessian_topk": 0,
                                          "hessian_trace_probes": 0}

    def __post_init__(self):
        from keras_sharpness.metric import check_settings

        eps = _numbers(self.eps, float, "eps")
        dims = _numbers(self.subspace_dims, int, "subspace_dims")
        starts = [s.strip() for s in str(self.start).split(",") if s.strip()]
        if not starts:
            raise UserError("give at least one start point")
        for e in eps:
            for one in starts:
                check_settings(e, 0, self.maxiter, one, None, self.subspace_scale)
        for p in dims:
            check_settings(eps[0], p, self.maxiter, starts[0], None, self.subspace_scale)
        if self.bn_eval not in BN_EVAL_CHOICES:
            raise UserError(f"unknown bn_eval {self.bn_eval!r}; choose one of "
                            f"{', '.join(BN_EVAL_CHOICES)}")
        normalized = {
            "eps": eps, "subspace_dims": dims, "start": ",".join(dict.fromkeys(starts)),
            "maxiter": int(self.maxiter),
            "eval_batch_size": _check_count(self.eval_batch_size, "the batch size of f",
                                            minimum=1),
            "num_samples": None if self.num_samples is None else _check_count(
                self.num_samples, "num_samples", minimum=1),
            "seed": _check_count(self.seed, "seed", minimum=0),
            "hessian_topk": _check_count(self.hessian_topk, "hessian_topk", minimum=0,
                                         zero_means="skip"),
            "hessian_trace_probes": _check_count(self.hessian_trace_probes,
                                                 "hessian_trace_probes", minimum=0,
                                                 zero_means="skip"),
        }
        for name, value in normalized.items():
            object.__setattr__(self, name, value)

    @property
    def starts(self):
        """The start rules, in order."""
        return self.start.split(",")

    def to_dict(self):
        """JSON-ready settings, as stored in measurement keys (`ADDED_LATER`)."""
        d = dataclasses.asdict(self)
        d["eps"] = [float(e) for e in self.eps]
        d["subspace_dims"] = [int(p) for p in self.subspace_dims]
        for key, old in self.ADDED_LATER.items():
            if d[key] == old:
                del d[key]
        return d


def _numbers(values, kind, name):
    """A non-empty tuple of `kind` numbers from `values`, or a `UserError`."""
    try:
        numbers = tuple(kind(v) for v in values)
        exact = all(kind is float or n == v for n, v in zip(numbers, values))
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a list of numbers, got {values!r}") from None
    if not numbers or not exact:
        raise UserError(f"{name} must be a non-empty list of {kind.__name__}s, got {values!r}")
    return numbers


def _check_count(value, name, *, minimum, zero_means=None):
    """`value` as an int >= `minimum`, or a one-line `UserError` naming `name`."""
    try:
        ok = not isinstance(value, bool) and int(value) == value and value >= minimum
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        what = (f"0 ({zero_means}) or a positive integer" if zero_means
                else "a positive integer" if minimum else "an integer >= 0")
        raise UserError(f"{name} must be {what}, got {value!r}")
    return int(value)


class Subject(typing.NamedTuple):
    """One model to measure.

    Attributes:
        label: its name in the records (``model``), unique within a sweep.
        model: the `keras.Model`; None to load it from `checkpoint`.
        checkpoint: path of its ``.keras`` file, whose SHA-256 identifies it
            in the records; None for a model that exists only in memory
            (then its label alone identifies it in the store).
    """

    label: str
    model: object = None
    checkpoint: object = None


def subjects(models):
    """`Subject`s from `Subject`s or ``(label, keras model or checkpoint path)`` pairs.

    Raises:
        UserError: an item of another shape, or two models with one label.
    """
    out = []
    for item in models:
        if not isinstance(item, Subject):
            try:
                label, source = item
            except (TypeError, ValueError):
                raise UserError(f"a model to measure is (label, keras model or checkpoint "
                                f"path), got {item!r}") from None
            if isinstance(source, (str, os.PathLike)):
                item = Subject(str(label), None, pathlib.Path(source))
            else:
                item = Subject(str(label), source, None)
        elif item.model is None and item.checkpoint is None:
            raise UserError(f"model {item.label!r} has neither a model nor a checkpoint")
        out.append(item._replace(checkpoint=None if item.checkpoint is None
                                 else pathlib.Path(item.checkpoint)))
    labels = [s.label for s in out]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise UserError(f"two models are labelled {twice[0]!r}; give every model its own label")
    return out


def record_key(record):
    """What a record answers: its ``measure`` (``"sharpness"`` where it names
    none) and its `RECORD_KEY` values (None where one is missing)."""
    return (record.get("measure", "sharpness"), *(record.get(k) for k in RECORD_KEY))


def record_store(path):
    """The `keras_sharpness.runs.RecordStore` at `path` (records keyed by `record_key`)."""
    from keras_sharpness.runs import RecordStore

    return RecordStore(path, key=record_key)


def _key_fields(settings, *, model, checkpoint_sha256, subspace_dim, eps, bn_eval):
    """The `RECORD_KEY` fields of one measurement, as a dict."""
    return {"model": model, "checkpoint_sha256": checkpoint_sha256, "eps": float(eps),
            "subspace_dim": int(subspace_dim), "maxiter": int(settings.maxiter),
            "seed": int(settings.seed), "start": settings.start, "bn_eval": bn_eval or "none",
            "batch_size": int(settings.eval_batch_size), "num_samples": settings.num_samples,
            "subspace_scale": settings.subspace_scale if subspace_dim else "identity"}


def make_record(result, settings, *, model, checkpoint_sha256=None, per_start=(), **context):
    """The record of one `SharpnessResult`: key, context, the result's fields.

    Args:
        result: the `keras_sharpness.metric.SharpnessResult` (for several
            starts, the best of `sharpness_multistart`).
        settings: the `MeasureSettings` it was made with.
        model: the model's label.
        checkpoint_sha256: SHA-256 of its checkpoint; None for a model in memory.
        per_start: every start's result, when there were several.
        **context: fields stored beside (``network``, ``checkpoint``,
            ``dataset``, ``hessian_top``, ``hessian_trace``, ``versions``).

    Returns:
        A JSON-ready dict of the schema in this module's docstring.
    """
    values = result.to_dict()
    for name in _RESULT_FIELDS_IN_KEY:
        del values[name]
    best_start = values.pop("start")
    num_train_samples = values.pop("num_samples")
    per_start = list(per_start)
    return {
        **_key_fields(settings, model=model, checkpoint_sha256=checkpoint_sha256,
                      subspace_dim=result.subspace_dim, eps=result.eps, bn_eval=result.bn_eval),
        **context,
        **values,
        "num_train_samples": num_train_samples,
        "best_start": best_start,
        "per_start": [{"start": r.start, "sharpness": r.phi, "phi_paper": r.phi_paper,
                       "iterations": r.iterations, "message": r.message}
                      for r in per_start] if len(per_start) > 1 else None,
    }


def training_loss(model, x, y, settings, num_samples=None):
    """The `TrainingLoss` that `settings` define, on ``(x, y)``."""
    from keras_sharpness.objective import TrainingLoss

    bn_eval = None if settings.bn_eval == "model" else settings.bn_eval
    return TrainingLoss(model, x, y, bn_eval=bn_eval, batch_size=int(settings.eval_batch_size),
                        num_samples=num_samples, seed=settings.seed)


def accuracy_and_loss(model, data, settings):
    """Train/test mean cross-entropy and accuracy (fractions) on whole splits."""
    out = {}
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        objective = training_loss(model, x, y, settings)
        loss, acc = objective.loss_and_accuracy(objective.initial_point())
        out[f"{split}_loss"], out[f"{split}_acc"] = float(loss), float(acc)
    return out


def accuracy_key(settings, *, model, checkpoint_sha256, bn_eval):
    """The key fields of an accuracy record (`record_key` of it)."""
    return {"measure": "accuracy", "model": model, "checkpoint_sha256": checkpoint_sha256,
            "bn_eval": bn_eval or "none", "batch_size": int(settings.eval_batch_size)}


def accuracy(subject, data, settings, store, *, network=None, dataset=None):
    """Accuracy and loss of one model on both splits: from the store, or computed
    (`accuracy_and_loss`) and stored.

    Args:
        subject: a `Subject` or a ``(label, model or checkpoint)`` pair.
        data: `keras_sharpness.data.ArrayData`, or a function returning it
            (called only if the record must be computed).
        settings: `MeasureSettings` (``bn_eval`` and ``eval_batch_size`` matter).
        store: path of the record store.
        network, dataset: context for the record.

    Returns:
        dict: ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``.
    """
    from keras_sharpness import io

    (subject,) = subjects([subject])
    model = subject.model if subject.model is not None else io.load_model(subject.checkpoint)
    digest = None if subject.checkpoint is None else io.sha256(subject.checkpoint)
    key = accuracy_key(settings, model=subject.label, checkpoint_sha256=digest,
                       bn_eval=_bn_eval_of(model, settings.bn_eval))
    store = record_store(store)
    with store.open():
        found = store.find(record_key(key))
        if found:
            return {k: found[-1][k] for k in ACCURACY_FIELDS}
        values = accuracy_and_loss(model, data() if callable(data) else data, settings)
        store.put({**key, "network": network or model.name,
                   "checkpoint": None if subject.checkpoint is None else str(subject.checkpoint),
                   "dataset": dataset, **values, "versions": io.versions()})
        return values


#: The values of an accuracy record.
ACCURACY_FIELDS = ("train_loss", "train_acc", "test_loss", "test_acc")


def measure_model(subject, data, settings, store, **sweep_options):
    """Accuracy and loss on both splits, and the model's records from `sweep`.

    Both come from the record store where it holds them, so a measured model
    is not measured again.

    Args:
        subject: a `Subject` or a ``(label, model or checkpoint)`` pair.
        data: `keras_sharpness.data.ArrayData`.
        settings: `MeasureSettings`.
        store: the record store of `sweep`.
        **sweep_options: ``network``, ``dataset``, ``overwrite``, ``echo``.

    Returns:
        dict: ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc`` and
        ``sharpness`` (the list of records, by subspace_dim then eps).
    """
    from keras_sharpness import io

    (subject,) = subjects([subject])
    if subject.model is None:
        subject = subject._replace(model=io.load_model(subject.checkpoint))
    context = {k: sweep_options.get(k) for k in ("network", "dataset")}
    return {**accuracy(subject, data, settings, store, **context),
            "sharpness": sweep([subject], data, settings, store, **sweep_options)}


def sweep(models, data, settings, store, *, network=None, dataset=None, overwrite=False,
          echo=print):
    """Metric 2.1 of every model at every (subspace_dim, eps): computed or reused.

    The one place sharpness is measured. For every model, then every
    subspace_dim, then every eps of `settings`, the record is taken from the
    store when one with the same key is there (and holds the Hessian numbers
    asked for), else computed and appended, the store being rewritten
    atomically after each. One A per (number of weights, p) serves every
    model and eps. The store is locked for the call: a second process
    writing it is refused at once.

    Args:
        models: `Subject`s, or ``(label, keras model or checkpoint path)``
            pairs; checkpoints are loaded (and a bad one refused) first.
        data: the `keras_sharpness.data.ArrayData` whose training split
            defines f, or a function of no arguments returning it (called
            once, and only if some record must be computed).
        settings: `MeasureSettings`.
        store: path of the record store (a JSON list of records).
        network: network name for the records (None: each model's name).
        dataset: data source for the records.
        overwrite: recompute records the store already holds.
        echo: called with one line per iteration and per record (None: silent).

    Returns:
        The records of this sweep, in order (model, subspace_dim, eps).

    Raises:
        UserError: bad settings, a store in use or of another format.
        CheckpointError: a missing or unreadable checkpoint.
    """
    from keras_sharpness import io

    echo = echo or _silent
    store = record_store(store)
    chosen = subjects(models)
    arrays = [] if callable(data) else [data]

    def training_data():
        if not arrays:
            arrays.append(data())
        return arrays[0]

    with store.open():
        loaded = [(subject, _load(subject, settings)) for subject in chosen]
        versions = io.versions()
        done = []
        for subject, model in loaded:
            digest = None if subject.checkpoint is None else io.sha256(subject.checkpoint)
            bn_eval = _bn_eval_of(model, settings.bn_eval)
            objective = hessian_top = trace = None
            for p in settings.subspace_dims:
                for e in settings.eps:
                    key = record_key(_key_fields(settings, model=subject.label,
                                                 checkpoint_sha256=digest, subspace_dim=p,
                                                 eps=e, bn_eval=bn_eval))
                    where = f"{subject.label}{f' p={p}' if p else ''} eps={e:g}"
                    found = [] if overwrite else [r for r in store.find(key)
                                                  if _reusable(r, settings)]
                    if found:
                        echo(f"{where}: reusing the record in {store.path}")
                        done.append(found[-1])
                        continue
                    if objective is None:
                        train = training_data()
                        objective = training_loss(model, train.x_train, train.y_train, settings,
                                                  settings.num_samples)
                        hessian_top, trace = _hessian(objective, settings, subject.label, echo)
                    best, per_start = _measure(objective, settings, p, e, where, echo)
                    record = make_record(
                        best, settings, model=subject.label, checkpoint_sha256=digest,
                        per_start=per_start, network=network or model.name,
                        checkpoint=None if subject.checkpoint is None else str(subject.checkpoint),
                        dataset=dataset, hessian_top=hessian_top, hessian_trace=trace,
                        versions=versions)
                    done.append(record)
                    store.put(record)
        return done


def _load(subject, settings):
    """The subject's model (loaded from its checkpoint if needed), checked
    against the subspace dimensions before any work."""
    from keras_sharpness import io, metric

    if subject.checkpoint is not None and not subject.checkpoint.is_file():
        raise CheckpointError(f"checkpoint {subject.checkpoint} does not exist")
    model = subject.model if subject.model is not None else io.load_model(subject.checkpoint)
    for p in settings.subspace_dims:
        metric.check_settings(settings.eps[0], p, settings.maxiter, settings.starts[0],
                              _num_params(model), settings.subspace_scale)
    return model


def _silent(line):
    del line


def _reusable(record, settings):
    """Whether a stored record holds the Hessian numbers asked for."""
    return ((settings.hessian_topk == 0
                 or len(record.get("hessian_top") or []) >= settings.hessian_topk)
            and (settings.hessian_trace_probes == 0 or bool(record.get("hessian_trace"))))


def _num_params(model):
    import numpy as np

    return int(sum(np.prod(v.shape, dtype=np.int64) for v in model.trainable_variables))


def _bn_eval_of(model, bn_eval):
    """The BatchNorm choice f uses for `model` (as `TrainingLoss` decides), or None."""
    from keras_sharpness.layers import model_bn_eval

    own = model_bn_eval(model)
    return None if own is None else (own if bn_eval == "model" else bn_eval)


def _hessian(objective, settings, label, echo):
    """``(top eigenvalues, trace dict or None)`` of one model, as `settings` ask."""
    from keras_sharpness import hessian

    top, trace = [], None
    if settings.hessian_topk:
        echo(f"{label}: top {settings.hessian_topk} Hessian eigenvalues (Lanczos)...")
        eig = hessian.top_eigenvalues(objective, int(settings.hessian_topk), seed=settings.seed)
        top = list(eig.eigenvalues)
        echo(f"{label}: Hessian top {[f'{v:.4g}' for v in top]} ({eig.products} products, "
             f"{eig.seconds:.1f}s{'' if eig.converged else ', NOT converged'})")
    if settings.hessian_trace_probes:
        echo(f"{label}: Hessian trace, {settings.hessian_trace_probes} Hutchinson probes...")
        trace = hessian.hessian_trace(objective, int(settings.hessian_trace_probes),
                                      seed=settings.seed).to_dict()
        echo(f"{label}: tr(H) = {trace['trace']:.4g} +- {trace['standard_error']:.2g} "
             f"({trace['seconds']:.1f}s)")
    return top, trace


def _measure(objective, settings, p, e, where, echo):
    """``(best, per_start)`` of `sharpness_multistart` at one (p, eps), echoed."""
    from keras_sharpness import metric

    def progress(s):
        echo(f"{where} iter {s.iteration}/{settings.maxiter}: f={s.f:.6g} fmax={s.fmax:.6g} "
             f"phi={s.phi:.4g} evals={s.evaluations} {s.seconds:.1f}s")

    best, per_start = metric.sharpness_multistart(
        objective, starts=settings.starts, eps=e, subspace_dim=p, maxiter=settings.maxiter,
        seed=settings.seed, subspace=_subspace(objective.num_params, p, settings.seed,
                                               settings.subspace_scale),
        progress=progress)
    echo(f"{where}: phi={best.phi:.4g} (f0={best.f0:.4g}, fmax={best.fmax:.4g}, "
         f"{best.iterations} iterations, {best.seconds:.1f}s; {best.message})")
    echo(f"{where}: ascent (phi after iterations 1..{best.iterations}): "
         + ", ".join(f"{v:.3g}" for v in ascent_summary(best.ascent)))
    return best, per_start


def _subspace(n, p, seed, scale):
    """A for (n, p, seed, scale); a random one is built once and kept for the next call."""
    from keras_sharpness.metric import FullSpace

    return FullSpace(n) if p == 0 else _random_subspace(n, p, seed, scale)


@functools.lru_cache(maxsize=1)
def _random_subspace(n, p, seed, scale):
    """Building a random A and its Gram matrix costs seconds for millions of
    weights; SB and LB of one network, every eps and every later sweep of
    the same network (trajectory epochs, trials) share it."""
    from keras_sharpness.metric import make_subspace

    return make_subspace(n, p, seed, scale)


def ascent_summary(ascent, points=10):
    """At most `points` values of the ascent, evenly spread, always the last."""
    import numpy as np

    if len(ascent) <= points:
        return list(ascent)
    picks = np.unique(np.linspace(0, len(ascent) - 1, points).round().astype(int))
    return [ascent[i] for i in picks]
