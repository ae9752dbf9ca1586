"""A command's settings as values: built once from the flags, checked once.

Each concern is a frozen dataclass that checks itself when it is made
(`__post_init__`), so a settings object that exists is a valid one; a bad
value raises `UserError` with one line naming the flag (``--alpha_max must be
a finite number, got inf``):

==================  ======================================================
`DataSettings`      which data: ``--dataset``, ``--data_dir``,
                    ``--train_size``, ``--test_size`` and the seed of the
                    subsets
`TrainingSettings`  which SB and LB minimizers: ``--network``, batch sizes,
                    stop rule, seed, strategy, accumulation, Appendix E
                    remedies
`PlotSettings`      the path sweep of the parametric plot
`RunSettings`       data + training: what one run directory holds; its
                    ``run.json`` records ``to_dict()`` under ``settings``
`PlotCommand`       everything ``plot_parametric_plot.py`` (``ks-plot``) does
==================  ======================================================

How the measurements are made (`keras_sharpness.measure.MeasureSettings`)
lives with the measurements.

A command builds its settings from its parsed flags (`PlotCommand.from_flags`,
`RunSettings.from_flags`), right after parsing and before TensorFlow is
imported or data is loaded (`keras_sharpness.cli.run`); a flag and the field
it sets share a name. From Python, make the objects directly::

    settings = PlotCommand(data=DataSettings("digits"),
                           training=TrainingSettings("F1", epochs=2))
    parametric_plot.run(settings)

`to_dict` / `from_dict` round-trip through JSON; ``dataclasses.replace``
checks the new value too.

Nothing here imports TensorFlow or Keras, so the tables the settings are
checked against live here: `NETWORKS`, `DEFAULT_DATASET` and `check_network`
(`keras_sharpness.networks` imports them) and `BN_EVAL_MODES`
(`keras_sharpness.layers.BN_MODES`).
"""

import dataclasses
import math
import os
from typing import Optional, Union

from keras_sharpness import remedies as remedies_lib
from keras_sharpness import schedules
from keras_sharpness.errors import UserError
from keras_sharpness.parametric import CURVES, PLOT_BN_EVAL
from keras_sharpness.training import STRATEGIES

#: The paper's six networks (built by `keras_sharpness.networks`).
NETWORKS = ("F1", "F2", "C1", "C2", "C3", "C4")

#: The data set each network was trained on in the paper. F2 needs TIMIT,
#: which is licensed: the user supplies it as ``npz:PATH`` (360-dim, 1973 classes).
DEFAULT_DATASET = {"F1": "mnist", "F2": None, "C1": "cifar10", "C2": "cifar10",
                   "C3": "cifar100", "C4": "cifar100"}

#: BatchNorm at evaluation of a trained model (`keras_sharpness.layers`).
BN_EVAL_MODES = ("batch", "moving")

#: The `TrainingSettings` fields that are `keras_sharpness.remedies.Remedies` options.
REMEDY_FIELDS = remedies_lib.FIELDS


def check_network(name):
    """The canonical (upper-case) network name, or a one-line `UserError`."""
    canonical = str(name).upper()
    if canonical not in NETWORKS:
        raise UserError(f"unknown network {name!r}; choose one of {', '.join(NETWORKS)}")
    return canonical


def default_dataset(network):
    """The paper's data set for `network`, or a `UserError` saying what to pass."""
    source = DEFAULT_DATASET[check_network(network)]
    if source is None:
        raise UserError(f"network {network} has no default data set (TIMIT is licensed); "
                        f"pass --dataset=npz:PATH with 360-dim features and 1973 classes")
    return source


# ------------------------------------------------------------ value checks
def _number(value, name):
    """`value` as a finite float."""
    if isinstance(value, bool):
        raise UserError(f"--{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"--{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise UserError(f"--{name} must be a finite number, got {value!r}")
    return number


def _whole(value, name, *, at_least=None, optional=False):
    """`value` as an int (None allowed when `optional`), at least `at_least`."""
    if value is None and optional:
        return None
    number = _number(value, name)
    if number != int(number):
        raise UserError(f"--{name} must be a whole number, got {value!r}")
    if at_least is not None and number < at_least:
        raise UserError(f"--{name} must be at least {at_least}, got {int(number)}")
    return int(number)


def _epochs(value, name):
    """A list of epochs as a tuple of ints: a sequence, or a comma-separated string."""
    if isinstance(value, str):
        value = [part for part in value.replace(" ", "").split(",") if part]
    if isinstance(value, bytes) or not hasattr(value, "__iter__"):
        raise UserError(f"--{name} must be a comma-separated list of epochs, got {value!r}")
    epochs = []
    for item in value:
        if isinstance(item, str):
            try:
                item = float(item)
            except ValueError:
                raise UserError(f"--{name} must be a comma-separated list of epochs, got "
                                f"{item!r}") from None
        epochs.append(_whole(item, name))
    return tuple(epochs)


def _non_negative(value, name):
    number = _number(value, name)
    if number < 0:
        raise UserError(f"--{name} must be >= 0, got {number:g}")
    return number


def _batch_size(value, name, *, optional=False):
    """A batch size: a whole count >= 1 (an int) or a fraction in (0, 1) (a float).

    Counts larger than the training set are found when the data is known
    (`keras_sharpness.training.resolve_batch_size`).
    """
    if value is None and optional:
        return None
    number = _number(value, name)
    if number <= 0:
        raise UserError(f"--{name} must be > 0 (samples, or a fraction below 1 of the "
                        f"training set), got {number:g}")
    if number < 1:
        return number
    if number != int(number):
        raise UserError(f"--{name} must be a whole number of samples or a fraction "
                        f"below 1, got {number:g}")
    return int(number)


def _choice(value, name, choices):
    if value not in choices:
        raise UserError(f"--{name} must be one of {', '.join(map(str, choices))}, "
                        f"got {value!r}")
    return value


def _path(value):
    return None if value is None else os.fspath(value)


# ---------------------------------------------------------------- the base
class _Settings:
    """`to_dict`, `from_dict` and `_from_flags`, shared by the settings classes.

    Subclasses normalize and check their fields in `_check`, which returns
    the normalized values; `__post_init__` stores them (the classes are
    frozen, so a made object never changes).
    """

    def __post_init__(self):
        for name, value in self._check().items():
            object.__setattr__(self, name, value)

    def _check(self):
        raise NotImplementedError

    def to_dict(self):
        """The fields as JSON-ready values (nested settings as dicts), the
        class's own first, then inherited keyword-only ones (the remedies)."""
        return {f.name: _to_json(getattr(self, f.name))
                for f in sorted(dataclasses.fields(self), key=lambda f: f.kw_only)}

    @classmethod
    def from_dict(cls, values):
        """The settings `to_dict` gave, checked again.

        Raises:
            UserError: an unknown or missing field, or a value out of range.
        """
        if not isinstance(values, dict):
            raise UserError(f"{cls.__name__} must be a JSON object, got {values!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise UserError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        missing = sorted(name for name, f in fields.items() if name not in values
                         and f.default is dataclasses.MISSING)
        if missing:
            raise UserError(f"{cls.__name__} without {', '.join(missing)}")
        return cls(**{name: (fields[name].type.from_dict(value)
                             if _is_settings(fields[name].type) else value)
                      for name, value in values.items()})

    @classmethod
    def _from_flags(cls, flag_values, **given):
        """The fields from the flags of the same name that the command defines.

        Fields without such a flag keep their defaults; `given` sets fields
        the command decides itself.
        """
        values = {f.name: flag_values[f.name].value for f in dataclasses.fields(cls)
                  if f.name in flag_values and f.name not in given}
        return cls(**values, **given)


def _is_settings(kind):
    return isinstance(kind, type) and issubclass(kind, _Settings)


def _to_json(value):
    if isinstance(value, tuple):  # as JSON reads it back
        return list(value)
    return value.to_dict() if isinstance(value, _Settings) else value


# ------------------------------------------------------------ the concerns
@dataclasses.dataclass(frozen=True)
class DataSettings(_Settings):
    """Which data: a source and, optionally, seeded subsets of its splits.

    Attributes:
        dataset: data source (`keras_sharpness.data.load_arrays`: ``mnist``,
            ``cifar10``, ``cifar100``, ``npz:PATH``, ``folder:PATH``,
            ``digits``).
        data_dir: TensorFlow Datasets directory.
        train_size, test_size: seeded subsets of the splits (None: all).
        seed: seed of the subsets.
    """

    dataset: str
    data_dir: Optional[str] = None
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    seed: int = 0

    def _check(self):
        if not isinstance(self.dataset, str) or not self.dataset:
            raise UserError(f"--dataset must name a data source, got {self.dataset!r}")
        return {"data_dir": _path(self.data_dir),
                "train_size": _whole(self.train_size, "train_size", at_least=1, optional=True),
                "test_size": _whole(self.test_size, "test_size", at_least=1, optional=True),
                "seed": _whole(self.seed, "seed", at_least=0)}

    @classmethod
    def from_flags(cls, flag_values, *, network):
        """From ``--dataset`` (default: `network`'s paper data set), ``--data_dir``,
        ``--train_size``, ``--test_size`` and ``--seed``."""
        dataset = flag_values["dataset"].value or default_dataset(network)
        return cls._from_flags(flag_values, dataset=dataset)


@dataclasses.dataclass(frozen=True)
class TrainingSettings(_Settings, remedies_lib.RemedyFields):
    """Which SB and LB minimizers: `keras_sharpness.training.train_sb_lb`.

    Attributes:
        network: ``F1``, ``F2``, ``C1``..``C4`` (stored upper-case).
        sb_batch_size, lb_batch_size: samples (an int), or a fraction below 1
            of the training set (a float); ``lb_batch_size=None``: the
            released 5000, or 10 % of a training set too small for it.
        epochs: epochs of each run without `until_converged`.
        until_converged: stop when the training-set f has not improved by
            more than ``max(min_delta, relative_min_delta * f)`` for
            `patience` epochs, at most `max_epochs`.
        eval_batch_size: fixed batch size of the per-epoch f.
        seed: x0, data order and dropout.
        bn_eval: BatchNorm at evaluation, saved with the models and used for
            the per-epoch f (``batch`` or ``moving``).
        strategy: ``default``, ``mirrored`` or ``multiworker``.
        accumulation_steps: LB gradient accumulation (micro-batches per step).
        augment, conservative_lambda, conservative_steps, adversarial_eps,
            adversarial_clean_weight: Appendix E remedies
            (`keras_sharpness.remedies.Remedies`).
        optimizer, learning_rate, momentum, lr_scaling, lr_reference_batch,
            warmup_epochs, lr_decay, train_longer, ghost_batch_size, sam_rho,
            sam_adaptive, sam_eta, batch_increase_epochs, batch_increase_factor,
            batch_increase_max: the remedies found since
            (`keras_sharpness.remedies.Remedies`, docs/remedies.md).
        remedies_apply_to: which runs get them: ``lb``, ``sb`` or ``both``.
    """

    network: str
    sb_batch_size: Union[int, float] = 256
    lb_batch_size: Union[int, float, None] = None
    epochs: int = 20
    until_converged: bool = False
    patience: int = 10
    min_delta: float = 1e-4
    relative_min_delta: float = 0.0
    max_epochs: int = 500
    eval_batch_size: int = 1000
    seed: int = 0
    bn_eval: str = "batch"
    strategy: str = "default"
    accumulation_steps: int = 1
    # ... and the remedy fields of `remedies_lib.RemedyFields` (keyword-only).
    remedies_apply_to: str = "lb"

    def _check(self):
        values = {
            "network": check_network(self.network),
            "sb_batch_size": _batch_size(self.sb_batch_size, "sb_batch_size"),
            "lb_batch_size": _batch_size(self.lb_batch_size, "lb_batch_size", optional=True),
            "epochs": _whole(self.epochs, "epochs", at_least=1),
            "until_converged": bool(self.until_converged),
            "patience": _whole(self.patience, "patience", at_least=1),
            "min_delta": _non_negative(self.min_delta, "min_delta"),
            "relative_min_delta": _non_negative(self.relative_min_delta, "relative_min_delta"),
            "max_epochs": _whole(self.max_epochs, "max_epochs", at_least=1),
            "eval_batch_size": _whole(self.eval_batch_size, "eval_batch_size", at_least=1),
            "seed": _whole(self.seed, "seed", at_least=0),
            "bn_eval": _choice(self.bn_eval, "bn_eval", BN_EVAL_MODES),
            "strategy": _choice(self.strategy, "strategy", STRATEGIES),
            "accumulation_steps": _whole(self.accumulation_steps, "accumulation_steps",
                                         at_least=1),
            "augment": bool(self.augment),
            "conservative_lambda": _number(self.conservative_lambda, "conservative_lambda"),
            "conservative_steps": _whole(self.conservative_steps, "conservative_steps"),
            "adversarial_eps": _number(self.adversarial_eps, "adversarial_eps"),
            "adversarial_clean_weight": _number(self.adversarial_clean_weight,
                                                "adversarial_clean_weight"),
            "optimizer": _choice(self.optimizer, "optimizer", schedules.OPTIMIZERS),
            "learning_rate": _number(self.learning_rate, "learning_rate"),
            "momentum": _number(self.momentum, "momentum"),
            "lr_scaling": _choice(self.lr_scaling, "lr_scaling", schedules.SCALING_RULES),
            "lr_reference_batch": _whole(self.lr_reference_batch, "lr_reference_batch",
                                         at_least=0),
            "warmup_epochs": _non_negative(self.warmup_epochs, "warmup_epochs"),
            "lr_decay": _choice(self.lr_decay, "lr_decay", remedies_lib.LR_DECAYS),
            "train_longer": bool(self.train_longer),
            "ghost_batch_size": _whole(self.ghost_batch_size, "ghost_batch_size", at_least=0),
            "sam_rho": _non_negative(self.sam_rho, "sam_rho"),
            "sam_adaptive": bool(self.sam_adaptive),
            "sam_eta": _non_negative(self.sam_eta, "sam_eta"),
            "batch_increase_epochs": _epochs(self.batch_increase_epochs,
                                             "batch_increase_epochs"),
            "batch_increase_factor": _number(self.batch_increase_factor,
                                             "batch_increase_factor"),
            "batch_increase_max": _whole(self.batch_increase_max, "batch_increase_max",
                                         at_least=0),
            "remedies_apply_to": _choice(self.remedies_apply_to, "remedies_apply_to",
                                         remedies_lib.APPLY_TO),
        }
        options = remedies_lib.Remedies(**{k: values[k] for k in REMEDY_FIELDS})
        lb_steps = values["accumulation_steps"] if "lb" in self._remedied(
            values["remedies_apply_to"]) else 1
        options.check(accumulation_steps=lb_steps)  # what the data does not decide
        return values

    @property
    def remedies(self):
        """The remedy options as a `keras_sharpness.remedies.Remedies`."""
        return remedies_lib.Remedies(**{k: getattr(self, k) for k in REMEDY_FIELDS})

    @property
    def remedied_runs(self):
        """The runs (``"sb"``, ``"lb"``) that get the remedies."""
        return self._remedied(self.remedies_apply_to)

    @staticmethod
    def _remedied(apply_to):
        return {"lb": ("lb",), "sb": ("sb",), "both": ("sb", "lb")}[apply_to]

    @classmethod
    def from_flags(cls, flag_values, **given):
        """From the flags named like the fields (absent ones keep their defaults).

        Raises:
            UserError: no ``--network``, or a value out of range.
        """
        if not flag_values["network"].value:
            raise UserError(f"--network (-n) is required: {', '.join(NETWORKS)}")
        return cls._from_flags(flag_values, **given)


@dataclasses.dataclass(frozen=True)
class PlotSettings(_Settings):
    """The path sweep of the parametric plot (`keras_sharpness.parametric`).

    Attributes:
        num_points: number of alphas, evenly spaced in [alpha_min, alpha_max].
        alpha_min, alpha_max: the ends (alpha = 0 is SB, 1 is LB).
        curve: ``linear`` or ``sin`` (Appendix D).
        bn_eval: BatchNorm along the path: ``batch``, ``recompute`` or ``moving``.
        eval_batch_size: fixed batch size of f along the path.
    """

    num_points: int = 25
    alpha_min: float = -1.0
    alpha_max: float = 2.0
    curve: str = "linear"
    bn_eval: str = "batch"
    eval_batch_size: int = 1000

    def _check(self):
        alpha_min = _number(self.alpha_min, "alpha_min")
        alpha_max = _number(self.alpha_max, "alpha_max")
        if not alpha_min < alpha_max:
            raise UserError(f"--alpha_min ({alpha_min:g}) must be smaller than --alpha_max "
                            f"({alpha_max:g})")
        return {"num_points": _whole(self.num_points, "num_points", at_least=2),
                "alpha_min": alpha_min, "alpha_max": alpha_max,
                "curve": _choice(self.curve, "curve", CURVES),
                "bn_eval": _choice(self.bn_eval, "bn_eval", PLOT_BN_EVAL),
                "eval_batch_size": _whole(self.eval_batch_size, "eval_batch_size", at_least=1)}

    @classmethod
    def from_flags(cls, flag_values):
        return cls._from_flags(flag_values)


# ----------------------------------------------------------- the commands
@dataclasses.dataclass(frozen=True)
class RunSettings(_Settings):
    """What one SB/LB run directory holds: its data and its training.

    `keras_sharpness.training.train_sb_lb` takes it and records it, resolved
    against the data (batch sizes in samples, the data source with an absolute
    path), in ``run.json`` under ``settings``.
    """

    data: DataSettings
    training: TrainingSettings

    def _check(self):
        for name, kind in (("data", DataSettings), ("training", TrainingSettings)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"RunSettings.{name} must be a {kind.__name__}")
        return {}

    @classmethod
    def from_flags(cls, flag_values, **training_given):
        """From the data and training flags of a command (nothing is loaded)."""
        trained = TrainingSettings.from_flags(flag_values, **training_given)
        return cls(data=DataSettings.from_flags(flag_values, network=trained.network),
                   training=trained)


@dataclasses.dataclass(frozen=True)
class PlotCommand(_Settings):
    """Everything the parametric-plot command does (`keras_sharpness.parametric_plot.run`).

    Attributes:
        data, training, plot: the settings of each stage. The models are
            trained with ``training.bn_eval`` (``batch``); ``plot.bn_eval``
            is BatchNorm along the path only.
        workdir: checkpoints and JSON (default ``runs/<network>``).
        figures_dir: where ``<network>.pdf`` / ``.png`` go (default: `workdir`).
        verbose: 0 silent, 1 progress bars, 2 one line per epoch.
    """

    data: DataSettings
    training: TrainingSettings
    plot: PlotSettings = PlotSettings()
    workdir: Optional[str] = None
    figures_dir: Optional[str] = None
    verbose: int = 1

    def _check(self):
        for name, kind in (("data", DataSettings), ("training", TrainingSettings),
                           ("plot", PlotSettings)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"PlotCommand.{name} must be a {kind.__name__}")
        workdir = _path(self.workdir) or os.path.join("runs", self.training.network)
        return {"workdir": workdir, "figures_dir": _path(self.figures_dir) or workdir,
                "verbose": _choice(_whole(self.verbose, "verbose"), "verbose", (0, 1, 2))}

    @property
    def run(self):
        """The `RunSettings` of the SB/LB training."""
        return RunSettings(data=self.data, training=self.training)

    @classmethod
    def from_flags(cls, flag_values):
        """From the flags of ``plot_parametric_plot.py`` (`keras_sharpness.commands`).

        One ``--eval_batch_size`` sets the per-epoch f of training and f along
        the path; ``--bn_eval`` is BatchNorm along the path, the models are
        trained and saved with batch statistics (the paper's ``mode=2``).
        """
        from keras_sharpness.cli import default_verbosity

        verbose = flag_values["verbose"].value
        run = RunSettings.from_flags(flag_values, bn_eval="batch")
        return cls(data=run.data, training=run.training,
                   plot=PlotSettings.from_flags(flag_values),
                   workdir=flag_values["workdir"].value,
                   figures_dir=flag_values["figures_dir"].value,
                   verbose=default_verbosity() if verbose is None else verbose)

    @classmethod
    def from_keywords(cls, network, *, dataset=None, data_dir=None, train_size=None,
                      test_size=None, num_points=25, alpha_min=-1.0, alpha_max=2.0,
                      curve="linear", bn_eval="batch", eval_batch_size=1000, workdir=None,
                      figures_dir=None, verbose=1, **training_keywords):
        """The keyword arguments `parametric_plot.run` took before it took settings."""
        trained = TrainingSettings(network=network, eval_batch_size=eval_batch_size,
                                   **training_keywords)
        return cls(
            data=DataSettings(dataset=dataset or default_dataset(trained.network),
                              data_dir=data_dir, train_size=train_size,
                              test_size=test_size, seed=trained.seed),
            training=trained,
            plot=PlotSettings(num_points=num_points, alpha_min=alpha_min,
                              alpha_max=alpha_max, curve=curve, bn_eval=bn_eval,
                              eval_batch_size=eval_batch_size),
            workdir=workdir, figures_dir=figures_dir, verbose=verbose)


__all__ = ["BN_EVAL_MODES", "DEFAULT_DATASET", "DataSettings", "NETWORKS", "PlotCommand",
           "PlotSettings", "REMEDY_FIELDS", "RunSettings", "TrainingSettings", "check_network",
           "default_dataset"]
