"""One owner per run directory: a second process is refused, a dead one's lock taken over."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

import concurrent_commands as concurrent
from keras_sharpness import runs
from keras_sharpness.errors import UserError

HOLDER = textwrap.dedent("""
    import sys, time
    from keras_sharpness import runs
    with runs.exclusive(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
""")


def _hold_in_another_process(folder):
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_owner_is_refused_naming_the_holder_and_a_killed_holder_is_taken_over(tmp_path):
    holder = _hold_in_another_process(tmp_path)
    try:
        with pytest.raises(UserError, match=f"in use by process {holder.pid}") as info:
            with runs.exclusive(tmp_path):
                pass
        assert "\n" not in str(info.value)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (tmp_path / runs.LOCK_NAME).read_text() == str(holder.pid)  # a stale lock ...
    with runs.exclusive(tmp_path) as path:  # ... is taken over
        assert path.read_text() == str(os.getpid())
    assert (tmp_path / runs.LOCK_NAME).read_text() == ""  # released (the file stays)


def test_locks_of_different_record_files_are_independent(tmp_path):
    with runs.exclusive(tmp_path, name=".a.json.lock"):
        with runs.exclusive(tmp_path, name=".b.json.lock"):
            pass
        with pytest.raises(UserError, match="a.json is in use"):
            with runs.exclusive(tmp_path, name=".a.json.lock", what="a.json"):
                pass


def test_a_second_plot_run_on_one_workdir_is_refused_before_any_work(tmp_path):
    from keras_sharpness import parametric_plot

    holder = _hold_in_another_process(tmp_path / "run")
    try:
        with pytest.raises(UserError, match="--workdir .* is in use by process"):
            parametric_plot.run("F1", dataset="digits", epochs=1, workdir=tmp_path / "run",
                                verbose=0)
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [runs.LOCK_NAME]
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()


def test_written_files_are_readable_by_the_group_under_a_normal_umask(tmp_path):
    from keras_sharpness import io

    old = os.umask(0o022)
    try:
        io.write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
    assert io.read_json(tmp_path / "r.json") == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary left



@pytest.fixture
def start():
    """`concurrent_commands.start`; what is still running at the end is killed."""
    started = []

    def start(*argv):
        started.append(concurrent.start(*argv))
        return started[-1]

    yield start
    concurrent.stop(started)


def test_two_sharpness_runs_on_one_record_file_one_refused_the_other_equal_to_a_solo_run(
        tmp_path, start):
    """Two compute_sharpness.py on one record file at once (`concurrent_commands`).

    The same for two plot_parametric_plot.py on one --workdir, which takes
    longer: benchmarks/concurrent_runs.py.
    """
    import keras
    import numpy as np

    from keras_sharpness.io import save_model, write_json
    from keras_sharpness.layers import SwitchableBatchNormalization

    shared, solo = tmp_path / "shared", tmp_path / "solo"
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", x_train=rng.integers(0, 256, (60, 8, 8), dtype=np.uint8),
             y_train=rng.integers(0, 10, 60),
             x_test=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8),
             y_test=rng.integers(0, 10, 20))
    for seed, name in ((1, "sb.keras"), (2, "lb.keras")):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.Dense(16)(keras.layers.Flatten()(inputs))
        h = keras.layers.Activation("relu")(SwitchableBatchNormalization()(h))
        save_model(keras.Model(inputs, keras.layers.Dense(10)(h), name="toy"), shared / name)
    write_json(shared / "run.json", {"network": "toy", "dataset": f"npz:{tmp_path / 'tiny.npz'}",
                                     "data_dir": None})
    shutil.copytree(shared, solo)
    command = [concurrent.REPO / "compute_sharpness.py", "--eps=1e-3,5e-4", "--maxiter=3",
               "--subspace_dim=5"]

    first = start(*command, f"--workdir={shared}")
    alone = start(*command, f"--workdir={solo}")  # meanwhile, in another directory
    with concurrent.stopped_while_holding(first, shared / ".sharpness.json.lock"):
        concurrent.assert_refused(start(*command, f"--workdir={shared}"),
                                  shared / "sharpness.json", first)
    concurrent.assert_finished(first)
    concurrent.assert_finished(alone)
    records = concurrent.records(shared / "sharpness.json")
    assert len(records) == 4  # SB and LB, two eps
    assert records == concurrent.records(solo / "sharpness.json")
