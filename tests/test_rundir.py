"""`RunDir`: one owner, one manifest, one record store, its own temporaries cleaned."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from keras_sharpness import io, runs
from keras_sharpness.errors import CheckpointError, UserError

HOLDER = textwrap.dedent("""
    import sys, time
    from keras_sharpness import runs
    with runs.RunDir(sys.argv[1], what="--workdir " + sys.argv[1]).open():
        print("held", flush=True)
        time.sleep(60)
""")


def test_a_second_process_is_refused_in_one_line_and_a_dead_ones_lock_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError) as info:
            with runs.RunDir(tmp_path, what=f"--workdir {tmp_path}").open():
                pass
        assert str(info.value) == (f"--workdir {tmp_path} is in use by process {holder.pid}; "
                                   f"wait for it to finish or stop it")
    finally:
        holder.kill()
        holder.wait()
    with runs.RunDir(tmp_path).open() as run:
        assert run.is_open and (tmp_path / runs.LOCK_NAME).read_text() == str(os.getpid())
    assert not run.is_open


def test_open_is_reentrant_in_one_process_and_writing_needs_it(tmp_path):
    run = runs.RunDir(tmp_path / "r")
    with pytest.raises(RuntimeError, match="without holding it"):
        run.write_manifest({"kind": "k"})
    with run.open():
        with runs.RunDir(tmp_path / "r").open() as inner:  # e.g. train_sb_lb inside a command
            inner.write_manifest({"kind": "k", "status": "running"})
        assert run.is_open
        assert run.set_status("finished")["status"] == "finished"
    assert not run.is_open
    assert json.loads(run.manifest_path.read_text()) == {"kind": "k", "status": "finished"}


def _leftover(folder, target):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{io.TEMP_PREFIX}{target}.abcd1234.tmp.json"
    path.write_text("torn")
    assert io.temporary_target(path.name) == target
    return path


def test_opening_removes_its_own_leftovers_only(tmp_path):
    mine = [_leftover(tmp_path, "run.json"), _leftover(tmp_path / "backups" / "sb", "backup.json")]
    # A record store is locked on its own: a measurement may be writing it now.
    (tmp_path / runs.lock_name("sharpness.json")).write_text("")
    store = _leftover(tmp_path, "sharpness.json")
    # A run directory inside (a trial) cleans its own.
    (tmp_path / "trial0").mkdir()
    (tmp_path / "trial0" / runs.LOCK_NAME).write_text("")
    nested = _leftover(tmp_path / "trial0", "sb.keras")
    with runs.RunDir(tmp_path).open():
        assert not any(p.exists() for p in mine)
        assert store.exists() and nested.exists()
    with runs.RunDir(tmp_path / "trial0").open():
        assert not nested.exists()


def test_claim_writes_the_manifest_and_refuses_the_work_of_other_settings(tmp_path):
    run = runs.RunDir(tmp_path)
    manifest = {"kind": "sweep", "settings": {"seed": 0, "training": {"epochs": 1}}}
    with run.open():
        run.claim(manifest)
        run.claim(manifest)  # the same: fine
        other = {"kind": "sweep", "settings": {"seed": 0, "training": {"epochs": 2}}}
        run.claim(other)  # no work yet: the directory is taken over
        assert run.manifest()["settings"]["training"]["epochs"] == 2
        run.model("x0").write_bytes(b"")
        with pytest.raises(CheckpointError) as info:
            run.claim(manifest)
        assert str(info.value) == (f"workdir {tmp_path} was made with training.epochs=2 "
                                   f"(now 1); use another --workdir or the same flags")
        with pytest.raises(CheckpointError, match="holds a run of kind sweep, not plot"):
            run.claim({**other, "kind": "plot"})
        # A key the recorded manifest lacks (a setting added later) is not compared.
        run.claim({**other, "settings": {**other["settings"], "new": 1}})
        # Strict keys are refused before any work exists too.
        run.model("x0").unlink()
        with pytest.raises(CheckpointError, match="seed=0 \\(now 1\\)"):
            run.claim({"kind": "sweep", "settings": {"seed": 1}}, strict=("seed",))


def test_checkpoints_without_a_manifest_are_refused_and_an_old_experiment_json_is_read(
        tmp_path):
    run = runs.RunDir(tmp_path)
    run.model("x0").write_bytes(b"")
    with run.open():
        with pytest.raises(CheckpointError, match="holds checkpoints \\(x0.keras\\) but no "
                                                  "run.json"):
            run.claim({"kind": "warm_start", "settings": {}})
        identity = {"experiment": "warm_start", "seed": 0}
        (tmp_path / "experiment.json").write_text(json.dumps(identity))
        assert run.manifest() == {"kind": "warm_start", "settings": identity, "status": None}
        run.claim({"kind": "warm_start", "settings": identity, "status": "running"})
        with pytest.raises(CheckpointError, match="seed=0 \\(now 1\\)"):
            run.claim({"kind": "warm_start", "settings": {**identity, "seed": 1}})
    # A run.json of an earlier version (no kind) is an SB/LB run directory's.
    (tmp_path / "run.json").write_text(json.dumps({"network": "F1", "seed": 0}))
    assert run.manifest() == {"kind": "sb_lb", "network": "F1", "seed": 0}
    with run.open(), pytest.raises(CheckpointError, match="of kind sb_lb, not warm_start"):
        run.claim({"kind": "warm_start", "settings": identity})
    (tmp_path / "run.json").write_text("{torn")
    with pytest.raises(CheckpointError, match="run.json is corrupt"):
        run.manifest()


def test_record_store_keeps_one_record_per_key_written_at_once(tmp_path):
    store = runs.RecordStore(tmp_path / "records.json", key=lambda r: r["k"])
    with pytest.raises(RuntimeError, match="without opening it"):
        store.put({"k": 1})
    with store.open():
        store.put({"k": 1, "v": "a"})
        store.put({"k": 2, "v": "b"})
        store.put({"k": 1, "v": "c"})
        assert store.find(1) == [{"k": 1, "v": "c"}] and store.find(3) == []
        assert json.loads(store.path.read_text()) == [{"k": 2, "v": "b"}, {"k": 1, "v": "c"}]
        with pytest.raises(UserError, match="records.json is in use by process"):
            with store.open():
                pass
    assert store.read() == [{"k": 2, "v": "b"}, {"k": 1, "v": "c"}]
    store.path.write_text("{}")
    with pytest.raises(UserError, match="not a list of measurement records"):
        store.read()


def test_a_held_directory_is_released_at_exit_without_a_traceback(tmp_path):
    """Left to garbage collection at interpreter shutdown, the lock's cleanup ran
    after the module's globals were gone and printed a traceback after a
    finished experiment's output (seen on ks-remedy-grid)."""
    import subprocess
    import sys

    script = (
        "from keras_sharpness import cli; cli.quiet_tensorflow()\n"
        "import keras_sharpness.experiments.trials\n"
        "from keras_sharpness.runs import RunDir\n"
        f"RunDir({str(tmp_path)!r}).hold()\n"
        f"RunDir({str(tmp_path / 'trial0')!r}).hold()\n"
        "print('held')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout == "held\n"
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
