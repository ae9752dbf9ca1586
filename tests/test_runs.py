"""One owner per run directory: a second process is refused, a dead one's lock taken over."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

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
