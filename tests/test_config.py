"""Settings objects: built from flags (or a flagfile), checked once, JSON round trip."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from absl import flags

from keras_sharpness import commands
from keras_sharpness.config import (
    DataSettings,
    PlotCommand,
    PlotSettings,
    RunSettings,
    TrainingSettings,
)
from keras_sharpness.errors import UserError
from keras_sharpness.experiments import flags as experiment_flags


def _parsed(define, argv):
    """Fresh flags of one command, parsed from `argv` (no global state)."""
    values = flags.FlagValues()
    define(values)
    values(["prog", *argv])
    return values


def test_plot_flags_default_to_the_settings_defaults():
    settings = PlotCommand.from_flags(_parsed(commands.define_plot_flags, ["-n", "f1"]))
    assert settings == PlotCommand(data=DataSettings("mnist"), training=TrainingSettings("F1"),
                                   plot=PlotSettings(), verbose=settings.verbose)
    assert settings.workdir == settings.figures_dir == os.path.join("runs", "F1")


def test_plot_flags_set_the_fields_of_their_name():
    settings = PlotCommand.from_flags(_parsed(commands.define_plot_flags, [
        "-n", "C1", "--dataset=digits", "--train_size=300", "--seed=4", "--lb_batch_size=0.1",
        "--until_converged", "--patience=3", "--accumulation_steps=2", "--augment",
        "--bn_eval=recompute", "--eval_batch_size=250", "--curve=sin", "--workdir=w",
        "--verbose=0"]))
    assert settings.data == DataSettings("digits", train_size=300, seed=4)
    assert settings.training == TrainingSettings(
        "C1", lb_batch_size=0.1, until_converged=True, patience=3, accumulation_steps=2,
        augment=True, seed=4, eval_batch_size=250)
    # --bn_eval is BatchNorm along the path; the models train with batch statistics.
    assert settings.plot == PlotSettings(curve="sin", bn_eval="recompute", eval_batch_size=250)
    assert settings.training.bn_eval == "batch"
    assert (settings.workdir, settings.figures_dir, settings.verbose) == ("w", "w", 0)


PLOT_ARGS = ["-n=F1", "--dataset=npz:data.npz", "--sb_batch_size=64", "--epochs=3",
             "--min_delta=0.001", "--alpha_max=1.5", "--curve=sin", "--adversarial_eps=0.01",
             "--remedies_apply_to=both", "--verbose=2"]


@pytest.mark.parametrize("define, build, argv", [
    (commands.define_plot_flags, PlotCommand.from_flags, PLOT_ARGS),
    (experiment_flags.define_common_flags, experiment_flags.settings_from_flags,
     ["--network=c2", "--dataset=digits", "--lb_batch_size=2000", "--until_converged",
      "--bn_eval=moving", "--test_size=50"]),
], ids=["plot", "experiments"])
def test_a_flagfile_gives_the_same_settings_as_the_flags(tmp_path, define, build, argv):
    flagfile = tmp_path / "run.flags"
    flagfile.write_text("# a comment\n" + "\n".join(argv) + "\n")
    from_flags = build(_parsed(define, argv))
    from_file = build(_parsed(define, [f"--flagfile={flagfile}"]))
    assert from_file == from_flags
    assert from_file != build(_parsed(define, argv[:2]))  # the file's flags did count


def test_experiment_flags_give_the_training_keywords_of_earlier_versions():
    """Trials, sweeps and their stored work directories use this dict as it was."""
    values = _parsed(experiment_flags.define_common_flags,
                     ["-n", "F1", "--dataset=digits", "--sb_batch_size=256.0",
                      "--data_dir=tfds", "--seed=3"])
    settings = experiment_flags.settings_from_flags(values)
    assert settings.training == TrainingSettings("F1", lb_batch_size=0.1, seed=3)
    keywords = experiment_flags.training_keywords(settings)
    assert keywords == dict(sb_batch_size=256, lb_batch_size=0.1, epochs=20,
                            until_converged=False, patience=10, min_delta=1e-4, max_epochs=500,
                            relative_min_delta=0.0, eval_batch_size=1000, train_size=None,
                            test_size=None, data_dir="tfds", data_seed=3)
    assert type(keywords["sb_batch_size"]) is int


@pytest.mark.parametrize("make, message", [
    (lambda: TrainingSettings("F9"), "unknown network 'F9'"),
    (lambda: TrainingSettings("F1", sb_batch_size=0), "--sb_batch_size must be > 0"),
    (lambda: TrainingSettings("F1", lb_batch_size=float("nan")),
     "--lb_batch_size must be a finite number"),
    (lambda: TrainingSettings("F1", sb_batch_size="many"), "--sb_batch_size must be a number"),
    (lambda: TrainingSettings("F1", lb_batch_size=2.5), "whole number of samples"),
    (lambda: TrainingSettings("F1", epochs=0), "--epochs must be at least 1"),
    (lambda: TrainingSettings("F1", patience=1.5), "--patience must be a whole number"),
    (lambda: TrainingSettings("F1", min_delta=-1e-3), "--min_delta must be >= 0"),
    (lambda: TrainingSettings("F1", relative_min_delta=float("inf")),
     "--relative_min_delta must be a finite number"),
    (lambda: TrainingSettings("F1", seed=-1), "--seed must be at least 0"),
    (lambda: TrainingSettings("F1", strategy="tpu"), "--strategy must be one of default"),
    (lambda: TrainingSettings("F1", bn_eval="recompute"), "--bn_eval must be one of batch, moving"),
    (lambda: TrainingSettings("F1", accumulation_steps=0),
     "--accumulation_steps must be at least 1"),
    (lambda: TrainingSettings("F1", adversarial_clean_weight=1), "adversarial_clean_weight"),
    (lambda: TrainingSettings("F1", conservative_lambda=1e-3, accumulation_steps=2),
     "cannot be combined with accumulation_steps"),
    (lambda: TrainingSettings("F1", remedies_apply_to="none"),
     "--remedies_apply_to must be one of"),
    (lambda: DataSettings(""), "--dataset must name a data source"),
    (lambda: DataSettings("digits", train_size=0), "--train_size must be at least 1"),
    (lambda: PlotSettings(num_points=1), "--num_points must be at least 2"),
    (lambda: PlotSettings(alpha_min=1, alpha_max=1), "--alpha_min (1) must be smaller"),
    (lambda: PlotSettings(alpha_max=float("inf")), "--alpha_max must be a finite number"),
    (lambda: PlotSettings(curve="cubic"), "--curve must be one of linear, sin"),
    (lambda: PlotSettings(bn_eval="model"), "--bn_eval must be one of batch, recompute, moving"),
    (lambda: PlotCommand(DataSettings("digits"), TrainingSettings("F1"), verbose=3),
     "--verbose must be one of 0, 1, 2"),
    (lambda: PlotCommand.from_keywords("F2"), "pass --dataset=npz:PATH"),
])
def test_a_bad_value_is_one_line_naming_the_setting(make, message):
    with pytest.raises(UserError) as info:
        make()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_conservative_training_with_accumulation_is_fine_when_lb_gets_no_remedy():
    settings = TrainingSettings("F1", conservative_lambda=1e-3, accumulation_steps=2,
                                remedies_apply_to="sb")
    assert settings.remedied_runs == ("sb",) and settings.remedies.conservative


def test_settings_are_frozen_and_a_replaced_value_is_checked_too():
    settings = TrainingSettings("F1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.epochs = 3
    assert dataclasses.replace(settings, epochs=3).epochs == 3
    with pytest.raises(UserError, match="--epochs must be at least 1"):
        dataclasses.replace(settings, epochs=0)


def test_to_dict_and_from_dict_round_trip_through_json():
    settings = PlotCommand(
        data=DataSettings("npz:data.npz", data_dir="tfds", train_size=500, seed=2),
        training=TrainingSettings("c3", lb_batch_size=0.1, until_converged=True, augment=True),
        plot=PlotSettings(num_points=5, curve="sin"), workdir="w", verbose=0)
    text = json.dumps(settings.to_dict())
    assert PlotCommand.from_dict(json.loads(text)) == settings
    run = settings.run
    assert RunSettings.from_dict(json.loads(json.dumps(run.to_dict()))) == run
    assert run.to_dict()["training"]["network"] == "C3"
    with pytest.raises(UserError, match="unknown TrainingSettings field"):
        TrainingSettings.from_dict({**run.training.to_dict(), "weight_decay": 0.1})
    with pytest.raises(UserError, match="RunSettings without training"):
        RunSettings.from_dict({"data": run.data.to_dict()})
    with pytest.raises(UserError, match="--epochs must be at least 1"):
        RunSettings.from_dict({"data": run.data.to_dict(),
                               "training": {**run.training.to_dict(), "epochs": -2}})


def test_the_earlier_plot_keyword_interface_builds_the_same_settings():
    plot = PlotCommand.from_keywords("c1", epochs=1, num_points=3, eval_batch_size=500,
                                     seed=2, workdir="w")
    assert plot.data == DataSettings("cifar10", seed=2)
    assert plot.training == TrainingSettings("C1", epochs=1, seed=2, eval_batch_size=500)
    assert plot.training.eval_batch_size == plot.plot.eval_batch_size == 500
    with pytest.raises(TypeError):
        PlotCommand.from_keywords("F1", dataset="digits", weight_decay=0.1)


def test_building_settings_from_flags_imports_no_tensorflow():
    script = ("import sys\n"
              "from keras_sharpness import commands, config\n"
              "from absl import flags\n"
              "commands.define_plot_flags()\n"
              "flags.FLAGS(['prog', '-n', 'F1', '--dataset=digits'])\n"
              "config.PlotCommand.from_flags(flags.FLAGS)\n"
              "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
