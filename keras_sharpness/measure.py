"""Every measure of a model, taken one way: one registry, one sweep, one store.

The measures (`MEASURES`): Metric 2.1 of Keskar et al. (``sharpness``),
accuracy and loss, the top Hessian eigenvalues, the Hessian trace and
eigenvalue density, adaptive worst- and average-case sharpness, PAC-Bayes
flatness and its magnitude-aware variant, the gradient noise scale and a
filter-normalized landscape. All of them evaluate the same f (`training_loss`:
one BatchNorm choice, one batch size, one subset of the training set), and
are chosen by `MeasureSettings.measures` (``compute_sharpness.py --measures``).

Every Metric 2.1 number of the project, from ``compute_sharpness.py`` and from
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
* context: ``network``, ``checkpoint`` (its path), ``dataset`` and
  ``versions`` (records of earlier versions also hold ``hessian_top`` and
  ``hessian_trace``; these are now measures of their own).

Every other measure's record (`measure_key`, made by `sweep`): ``measure``
(its name), the key ``model``, ``checkpoint_sha256``, ``seed``, ``bn_eval``,
``batch_size``, ``num_samples`` and ``params`` (the settings that define it,
`MeasureSettings.params`); the number ``value`` (what it is:
``value_name``), ``result`` (the measure's whole result, its ``to_dict``),
``figures`` (paths), ``num_train_samples``, ``seconds`` and the context.

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

import contextlib
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
        measures: the measures to take (names of `MEASURES`, in any order;
            ``("all",)`` for every one). ``sharpness`` is Metric 2.1 above.
        hessian_topk: k of ``hessian_top`` (0: skip; a positive k adds the
            measure, and asking for the measure with k = 0 takes k = 1).
        hessian_trace_probes: most Hutchinson probes of ``hessian_trace``
            (0: skip; likewise, the measure alone takes 100).
        trace_rtol: stop the trace's probes once its standard error is at most
            this fraction of it (0: use every probe).
        density_probes, lanczos_steps: probes and Lanczos steps of
            ``spectral_density`` (SLQ; PyHessian uses 1 probe, 100 steps).
        adaptive_rho, adaptive_norm, adaptive_eta: radius, norm (``"l2"``
            or ``"linf"``) and eta of c = |w| + eta of the adaptive measures.
        adaptive_steps: projected-gradient ascent steps of ``adaptive_worst``.
        adaptive_samples: Gaussian draws of ``adaptive_average``.
        m_sharpness: m of m-sharpness (the adaptive measures maximize, or
            average, per batch of m samples and average over batches); 0 for
            the whole subset at once.
        pac_bayes_target: the rise of the training error (a fraction) that
            defines sigma (Jiang et al. 2020: 0.1).
        pac_bayes_samples: random perturbations per sigma of the bisection.
        noise_bootstrap: bootstrap resamples of the noise scale's interval.
        noise_group_size: samples per group of the noise scale: the small
            batch b of its two-batch estimator (batch-statistics BN), else
            the unit its bootstrap resamples.
        landscape_points, landscape_span: alphas of the 1-D filter-normalized
            landscape: that many points in [-span, span].

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
    measures: tuple = ("sharpness",)
    trace_rtol: float = 0.01
    density_probes: int = 3
    lanczos_steps: int = 90
    adaptive_rho: float = 0.1
    adaptive_norm: str = "l2"
    adaptive_eta: float = 0.0
    adaptive_steps: int = 20
    adaptive_samples: int = 20
    m_sharpness: int = 0
    pac_bayes_target: float = 0.1
    pac_bayes_samples: int = 10
    noise_bootstrap: int = 1000
    noise_group_size: int = 100
    landscape_points: int = 21
    landscape_span: float = 1.0

    #: Fields added after results were stored, with the value those results
    #: were made with: left out of `to_dict` at that value, so stored
    #: measurements keep matching their key.
    ADDED_LATER: typing.ClassVar[dict] = {
        "subspace_scale": "gaussian", "hessian_topk": 0, "hessian_trace_probes": 0,
        "measures": ("sharpness",), "trace_rtol": 0.01, "density_probes": 3,
        "lanczos_steps": 90, "adaptive_rho": 0.1, "adaptive_norm": "l2", "adaptive_eta": 0.0,
        "adaptive_steps": 20, "adaptive_samples": 20, "m_sharpness": 0,
        "pac_bayes_target": 0.1, "pac_bayes_samples": 10, "noise_bootstrap": 1000,
        "noise_group_size": 100,
        "landscape_points": 21, "landscape_span": 1.0}

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
        normalized.update(_measure_options(self, normalized))
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
        if "measures" in d:
            d["measures"] = list(d["measures"])
        return d

    def params(self, name):
        """The settings that define measure `name` (part of its records' key)."""
        return {key: getattr(self, field) for key, field in MEASURES[name].params.items()}


def _measure_options(settings, normalized):
    """The checked values of the measures' own settings (`MEASURES`)."""
    names = settings.measures
    if isinstance(names, str):
        names = names.split(",")
    try:
        names = [str(n).strip() for n in names if str(n).strip()]
    except TypeError:
        raise UserError(f"measures must be a list of names, got {names!r}") from None
    if "all" in names:
        names = list(MEASURES)
    unknown = [n for n in names if n not in MEASURES]
    if unknown or not names:
        raise UserError(f"unknown measure {unknown[0] if unknown else '(none)'!r}; choose "
                        f"from {', '.join(MEASURES)} or all")
    out = {
        "trace_rtol": _check_real(settings.trace_rtol, "trace_rtol", low=0.0, high=1.0),
        "density_probes": _check_count(settings.density_probes, "density_probes", minimum=1),
        "lanczos_steps": _check_count(settings.lanczos_steps, "lanczos_steps", minimum=2),
        "adaptive_rho": _check_real(settings.adaptive_rho, "adaptive_rho", low=0.0,
                                    open_low=True),
        "adaptive_eta": _check_real(settings.adaptive_eta, "adaptive_eta", low=0.0),
        "adaptive_steps": _check_count(settings.adaptive_steps, "adaptive_steps", minimum=1),
        "adaptive_samples": _check_count(settings.adaptive_samples, "adaptive_samples",
                                         minimum=2),
        "m_sharpness": _check_count(settings.m_sharpness, "m_sharpness", minimum=0,
                                    zero_means="the whole subset"),
        "pac_bayes_target": _check_real(settings.pac_bayes_target, "pac_bayes_target",
                                        low=0.0, open_low=True),
        "pac_bayes_samples": _check_count(settings.pac_bayes_samples, "pac_bayes_samples",
                                          minimum=1),
        "noise_bootstrap": _check_count(settings.noise_bootstrap, "noise_bootstrap",
                                        minimum=100),
        "noise_group_size": _check_count(settings.noise_group_size, "noise_group_size",
                                         minimum=2),
        "landscape_points": _check_count(settings.landscape_points, "landscape_points",
                                         minimum=3),
        "landscape_span": _check_real(settings.landscape_span, "landscape_span", low=0.0,
                                      open_low=True),
    }
    if out["landscape_points"] % 2 == 0:
        raise UserError(f"landscape_points must be odd (the curve is centred on the "
                        f"minimizer, alpha = 0), got {settings.landscape_points}")
    if settings.adaptive_norm not in ("l2", "linf"):
        raise UserError(f"adaptive_norm must be l2 or linf, got {settings.adaptive_norm!r}")
    if normalized["hessian_topk"]:
        names.append("hessian_top")
    elif "hessian_top" in names:
        out["hessian_topk"] = 1
    if normalized["hessian_trace_probes"]:
        names.append("hessian_trace")
    elif "hessian_trace" in names:
        out["hessian_trace_probes"] = 100
    # In the order of MEASURES, whatever the order asked.
    out["measures"] = tuple(n for n in MEASURES if n in names)
    return out


def _check_real(value, name, *, low=None, high=None, open_low=False):
    """`value` as a finite float in [low, high] ((low, high] if `open_low`), or a one-line
    `UserError` naming `name`."""
    import math

    try:
        number = float(value)
        ok = not isinstance(value, bool) and math.isfinite(number)
    except (TypeError, ValueError):
        ok = False
    if ok and low is not None:
        ok = number > low if open_low else number >= low
    if ok and high is not None:
        ok = number <= high
    if not ok:
        bound = (f" > {low:g}" if open_low else f" >= {low:g}") if low is not None else ""
        bound += f" and <= {high:g}" if high is not None else ""
        raise UserError(f"{name} must be a finite number{bound}, got {value!r}")
    return number


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


@dataclasses.dataclass(frozen=True)
class Measure:
    """One measure of the registry (`MEASURES`).

    Attributes:
        name: its name in ``--measures`` and in its records' ``measure``.
        summary: one line: what it is and whose it is.
        value: what a record's ``value`` is (the number the report ranks).
        params: record field -> `MeasureSettings` field, the settings that
            define it (part of the record's key).
        take: ``(objective, settings, figure_stem, echo) -> (value, result
            dict, figure paths)`` (figure_stem None: draw none); None for
            the two measures the sweep takes its own way (``sharpness``,
            ``accuracy``).
        sharper_is_larger: a larger value means a sharper minimum (False
            for the noise scale, which is no sharpness).
    """

    name: str
    summary: str
    value: str
    params: dict
    take: typing.Callable = None
    sharper_is_larger: bool = True


def _take_hessian_top(objective, settings, figure_stem, echo):
    from keras_sharpness import hessian

    eig = hessian.top_eigenvalues(objective, settings.hessian_topk, seed=settings.seed)
    if not eig.converged:
        echo("  Lanczos did not converge; the record says so (converged: false)")
    return eig.eigenvalues[0], eig.to_dict(), []


def _take_hessian_trace(objective, settings, figure_stem, echo):
    from keras_sharpness import hessian

    probes = settings.hessian_trace_probes
    # The stop rule needs a few probes for a standard error; with fewer asked, all run.
    rule = (dict(rtol=settings.trace_rtol, min_probes=min(10, probes))
            if settings.trace_rtol and probes >= 2 else dict(rtol=None))
    trace = hessian.hessian_trace(objective, probes, seed=settings.seed, **rule)
    return trace.trace, trace.to_dict(), []


def _take_spectral_density(objective, settings, figure_stem, echo):
    from keras_sharpness import hessian, plotting

    density = hessian.spectral_density(objective, num_probes=settings.density_probes,
                                       lanczos_steps=settings.lanczos_steps, seed=settings.seed)
    figures = [] if figure_stem is None else plotting.plot_spectral_density(density,
                                                                             figure_stem)
    result = density.to_dict()
    return float(max(max(nodes) for nodes in result["nodes"])), result, figures


def _adaptive(kind):
    def take(objective, settings, figure_stem, echo):
        from keras_sharpness import flatness

        result = flatness.adaptive_sharpness(
            objective, settings.adaptive_rho, kind=kind, norm=settings.adaptive_norm,
            eta=settings.adaptive_eta, steps=settings.adaptive_steps,
            samples=settings.adaptive_samples, batch_size=settings.m_sharpness or None,
            seed=settings.seed)
        return result.value, result.to_dict(), []
    return take


def _pac_bayes(magnitude_aware):
    def take(objective, settings, figure_stem, echo):
        from keras_sharpness import flatness

        result = flatness.pac_bayes_sigma(
            objective, target=settings.pac_bayes_target, magnitude_aware=magnitude_aware,
            samples=settings.pac_bayes_samples, seed=settings.seed)
        return result.flatness, result.to_dict(), []
    return take


def _take_noise_scale(objective, settings, figure_stem, echo):
    from keras_sharpness import noise_scale

    result = noise_scale.gradient_noise_scale(objective, bootstrap=settings.noise_bootstrap,
                                              group_size=max(2, min(
                                                  settings.noise_group_size,
                                                  objective.num_samples // 2)),
                                              seed=settings.seed)
    return result.b_simple, result.to_dict(), []


def _take_landscape(objective, settings, figure_stem, echo):
    import numpy as np

    from keras_sharpness import landscape

    direction = landscape.filter_normalized_direction(objective, seed=settings.seed)
    span = settings.landscape_span
    curve = landscape.landscape_1d(
        objective, direction, np.linspace(-span, span, settings.landscape_points))
    figures = [] if figure_stem is None else landscape.plot_landscape_1d(curve, figure_stem)
    result = curve.to_dict()
    losses = np.asarray(result["loss"], dtype=np.float64)
    return float(losses.max() - losses[len(losses) // 2]), result, figures


#: Every measure, in the order records and tables list them.
MEASURES = {m.name: m for m in (
    Measure("sharpness", "Metric 2.1 of Keskar et al. (phi, % of 1 + f), at every eps "
            "and subspace dim", "phi", {}),
    Measure("accuracy", "train and test accuracy and mean cross-entropy (whole splits)",
            "test - train loss", {}, sharper_is_larger=False),
    Measure("hessian_top", "largest Hessian eigenvalues (Lanczos, ARPACK)",
            "largest eigenvalue", {"k": "hessian_topk"}, _take_hessian_top),
    Measure("hessian_trace", "Hessian trace (Hutchinson, Rademacher probes, stop on its "
            "standard error)", "trace", {"probes": "hessian_trace_probes",
                                         "rtol": "trace_rtol"}, _take_hessian_trace),
    Measure("spectral_density", "Hessian eigenvalue density (stochastic Lanczos "
            "quadrature, Ghorbani et al. 2019)", "largest Ritz value",
            {"probes": "density_probes", "lanczos_steps": "lanczos_steps"},
            _take_spectral_density),
    Measure("adaptive_worst", "adaptive worst-case sharpness (max of f(w + d) - f(w) over "
            "|d / c| <= rho, c = |w| + eta; Kwon et al. 2021, Andriushchenko et al. 2023)",
            "loss increase", {"rho": "adaptive_rho", "norm": "adaptive_norm",
                              "eta": "adaptive_eta", "steps": "adaptive_steps",
                              "m": "m_sharpness"}, _adaptive("worst")),
    Measure("adaptive_average", "adaptive average-case sharpness (E f(w + d) - f(w), "
            "d ~ N(0, rho^2 c^2))", "loss increase",
            {"rho": "adaptive_rho", "eta": "adaptive_eta", "samples": "adaptive_samples",
             "m": "m_sharpness"}, _adaptive("average")),
    Measure("pac_bayes", "PAC-Bayes flatness 1/sigma^2 (Jiang et al. 2020: the largest "
            "sigma of N(0, sigma^2) noise raising the training error by at most the target; "
            "None if even sigma = 0 does)",
            "1 / sigma^2",
            {"target": "pac_bayes_target", "samples": "pac_bayes_samples"}, _pac_bayes(False)),
    Measure("pac_bayes_magnitude", "magnitude-aware PAC-Bayes flatness 1/sigma'^2 "
            "(noise scaled by |w|; Jiang et al. 2020)", "1 / sigma'^2",
            {"target": "pac_bayes_target", "samples": "pac_bayes_samples"},
            _pac_bayes(True)),
    Measure("noise_scale", "gradient noise scale B_simple = tr(Sigma) / |G|^2 "
            "(McCandlish et al. 2018), the critical batch size it predicts",
            "B_simple", {"bootstrap": "noise_bootstrap", "group_size": "noise_group_size"},
            _take_noise_scale,
            sharper_is_larger=False),
    Measure("landscape", "1-D filter-normalized loss landscape along a random direction "
            "(Li et al. 2018)", "largest loss rise on the curve",
            {"points": "landscape_points", "span": "landscape_span"}, _take_landscape),
)}


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
    none), its `RECORD_KEY` values (None where one is missing) and the
    measure's ``params`` (None for sharpness and accuracy records)."""
    params = record.get("params")
    frozen = None if params is None else tuple(sorted(
        (k, tuple(v) if isinstance(v, list) else v) for k, v in params.items()))
    return (record.get("measure", "sharpness"), *(record.get(k) for k in RECORD_KEY), frozen)


def measure_key(settings, name, *, model, checkpoint_sha256, bn_eval):
    """The key fields of a record of registry measure `name` (`MEASURES`)."""
    return {"measure": name, "model": model, "checkpoint_sha256": checkpoint_sha256,
            "seed": int(settings.seed), "bn_eval": bn_eval or "none",
            "batch_size": int(settings.eval_batch_size), "num_samples": settings.num_samples,
            "params": settings.params(name)}


def record_store(path, write=True):
    """The `keras_sharpness.runs.RecordStore` at `path` (records keyed by `record_key`)."""
    from keras_sharpness.runs import RecordStore

    return RecordStore(path, key=record_key, write=write)


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


def training_loss(model, x, y, settings, num_samples=None, strategy=None):
    """The `TrainingLoss` that `settings` define, on ``(x, y)`` (its batches spread
    over the replicas of `strategy`, if one is given: the values do not change)."""
    from keras_sharpness.objective import TrainingLoss

    bn_eval = None if settings.bn_eval == "model" else settings.bn_eval
    return TrainingLoss(model, x, y, bn_eval=bn_eval, batch_size=int(settings.eval_batch_size),
                        num_samples=num_samples, seed=settings.seed, strategy=strategy)


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
    store = record_store(store)
    with store.open():
        record = _accuracy_record(store, subject, model, digest, data, settings,
                                  network=network, dataset=dataset)
        return {k: record[k] for k in ACCURACY_FIELDS}


def _accuracy_record(store, subject, model, digest, data, settings, *, network, dataset,
                     overwrite=False):
    """The accuracy record of one model in an open store: found, or made and stored."""
    from keras_sharpness import io

    key = accuracy_key(settings, model=subject.label, checkpoint_sha256=digest,
                       bn_eval=_bn_eval_of(model, settings.bn_eval))
    found = [] if overwrite else store.find(record_key(key))
    if found:
        return found[-1]
    values = accuracy_and_loss(model, data() if callable(data) else data, settings)
    record = {**key, "network": network or model.name,
              "checkpoint": None if subject.checkpoint is None else str(subject.checkpoint),
              "dataset": dataset, **values, "versions": io.versions()}
    store.put(record)
    return record


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
        dict: ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``,
        ``sharpness`` (the Metric 2.1 records, by subspace_dim then eps) and
        ``measures`` (the records of the other measures of `settings`).
    """
    from keras_sharpness import io

    (subject,) = subjects([subject])
    if subject.model is None:
        subject = subject._replace(model=io.load_model(subject.checkpoint))
    context = {k: sweep_options.get(k) for k in ("network", "dataset")}
    values = accuracy(subject, data, settings, store, **context)
    records = sweep([subject], data, settings, store, **sweep_options)
    return {**values, "sharpness": [r for r in records if "measure" not in r],
            "measures": [r for r in records if r.get("measure") not in (None, "accuracy")]}


def sweep(models, data, settings, store, *, network=None, dataset=None, overwrite=False,
          echo=print, strategy=None):
    """Every measure of `settings` of every model: computed or reused.

    The one place models are measured. For every model: Metric 2.1 at every
    subspace_dim, then every eps of `settings` (if ``sharpness`` is among
    ``settings.measures``), then each other measure in `MEASURES` order;
    each record is taken from the store when one with the same key is
    there, else computed and stored, the store being rewritten atomically
    after each. One A per (number of weights, p) serves every model and eps;
    one f (`training_loss`) serves every measure of a model. The store is
    locked for the call: a second process writing it is refused at once.
    Figures of measures that draw one go to ``figures/`` beside the store.

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
        strategy: a `tf.distribute.MirroredStrategy` or
            `MultiWorkerMirroredStrategy` whose replicas share f's batches
            (`keras_sharpness.objective.TrainingLoss`); None: one device.
            Across workers every worker runs the same sweep and computes the
            same numbers; only the chief writes the store and the figures
            (the others' figures go to a temporary folder). The others read
            the store once the chief holds it, before it writes anything, so
            all of them reuse the same records.

    Returns:
        The records of this sweep, in order: per model, its Metric 2.1
        records (subspace_dim, eps), then one record per other measure.

    Raises:
        UserError: bad settings, a store in use or of another format.
        CheckpointError: a missing or unreadable checkpoint.
    """
    import tempfile

    from keras_sharpness import io
    from keras_sharpness.training import barrier, is_chief

    echo = echo or _silent
    chief = strategy is None or is_chief(strategy)
    store = record_store(store, write=chief)
    chosen = subjects(models)
    arrays = [] if callable(data) else [data]

    def training_data():
        if not arrays:
            arrays.append(data())
        return arrays[0]

    if not chief:  # read the store once the chief holds it (no earlier writer lives)
        barrier(strategy)
    with store.open(), (contextlib.nullcontext(store.path.parent / "figures") if chief
                        else tempfile.TemporaryDirectory(prefix="ks-worker-")) as figures:
        if chief:
            barrier(strategy)
        figures = pathlib.Path(figures)
        loaded = [(subject, _load(subject, settings)) for subject in chosen]
        versions = io.versions()
        done = []
        for subject, model in loaded:
            digest = None if subject.checkpoint is None else io.sha256(subject.checkpoint)
            bn_eval = _bn_eval_of(model, settings.bn_eval)
            objective = None

            def objective_of_model():
                nonlocal objective
                if objective is None:
                    train = training_data()
                    objective = training_loss(model, train.x_train, train.y_train, settings,
                                              settings.num_samples, strategy=strategy)
                return objective

            context = dict(network=network or model.name, dataset=dataset,
                           checkpoint=None if subject.checkpoint is None
                           else str(subject.checkpoint))
            if "accuracy" in settings.measures:
                done.append(_accuracy_record(store, subject, model, digest, training_data,
                                             settings, overwrite=overwrite,
                                             network=context["network"], dataset=dataset))
            for p in settings.subspace_dims if "sharpness" in settings.measures else ():
                for e in settings.eps:
                    key = record_key(_key_fields(settings, model=subject.label,
                                                 checkpoint_sha256=digest, subspace_dim=p,
                                                 eps=e, bn_eval=bn_eval))
                    where = f"{subject.label}{f' p={p}' if p else ''} eps={e:g}"
                    found = [] if overwrite else store.find(key)
                    if found:
                        echo(f"{where}: reusing the record in {store.path}")
                        done.append(found[-1])
                        continue
                    best, per_start = _measure(objective_of_model(), settings, p, e, where, echo)
                    record = make_record(
                        best, settings, model=subject.label, checkpoint_sha256=digest,
                        per_start=per_start, versions=versions, **context)
                    done.append(record)
                    store.put(record)
            for name in settings.measures:
                if MEASURES[name].take is None:
                    continue
                key = measure_key(settings, name, model=subject.label,
                                  checkpoint_sha256=digest, bn_eval=bn_eval)
                found = [] if overwrite else store.find(record_key(key))
                if found:
                    echo(f"{subject.label} {name}: reusing the record in {store.path}")
                    done.append(found[-1])
                    continue
                record = _take(name, key, objective_of_model(), settings,
                               figures / f"{subject.label}_{name}",
                               echo, versions=versions, **context)
                done.append(record)
                store.put(record)
        return done


def _take(name, key, objective, settings, figure_stem, echo, **context):
    """The record of registry measure `name` of one model, echoed."""
    import time

    measure = MEASURES[name]
    echo(f"{key['model']} {name}: {measure.summary}...")
    started = time.perf_counter()
    value, result, figures = measure.take(objective, settings, figure_stem, echo)
    seconds = time.perf_counter() - started
    value = None if value is None else float(value)
    echo(f"{key['model']} {name}: {measure.value} = "
         f"{'undefined' if value is None else format(value, '.5g')} ({seconds:.1f}s)"
         + (f"; figure {figures[-1]}" if figures else ""))
    return {**key, **context, "value": value, "value_name": measure.value,
            "num_train_samples": objective.num_samples, "seconds": seconds,
            "figures": [str(f) for f in figures], "result": result}


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


def _num_params(model):
    import numpy as np

    return int(sum(np.prod(v.shape, dtype=np.int64) for v in model.trainable_variables))


def _bn_eval_of(model, bn_eval):
    """The BatchNorm choice f uses for `model` (as `TrainingLoss` decides), or None."""
    from keras_sharpness.layers import model_bn_eval

    own = model_bn_eval(model)
    return None if own is None else (own if bn_eval == "model" else bn_eval)


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
