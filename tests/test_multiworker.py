"""Two `MultiWorkerMirroredStrategy` workers on 127.0.0.1, for real.

Each test starts two processes of tests/multiworker_worker.py, each with its
own TF_CONFIG (two free loopback ports, CPU collectives), as two machines
would run them; nothing else of the cluster is simulated.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import numpy as np

HERE = pathlib.Path(__file__).parent
WORKER = HERE / "multiworker_worker.py"
TIMEOUT = 240  # seconds a whole cluster may take; a hang fails the test


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def environment(tf_config=None):
    # One thread each: two workers share the test machine's cores.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
           "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def run_alone(workdir):
    """The same training in this process, on one device."""
    sys.path.insert(0, str(HERE))
    import multiworker_worker

    multiworker_worker.main(str(workdir), "default")


def run_cluster(workdir, mode="multiworker", kill=None):
    """Starts worker 0 (the chief) and worker 1; returns their exit codes, logs
    and process ids.

    `kill` = (epoch, batch): worker 1 kills itself there (SIGKILL).
    """
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers = []
    for index in range(2):
        argv = [sys.executable, str(WORKER), str(workdir), mode]
        if kill is not None and index == 1:
            argv += [str(k) for k in kill]
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        workers.append(subprocess.Popen(argv, env=environment(config), text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    codes, logs = [], []
    try:
        for worker in workers:
            logs.append(worker.communicate(timeout=TIMEOUT)[0])
            codes.append(worker.returncode)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    return codes, logs, [worker.pid for worker in workers]


def load(workdir):
    from keras_sharpness import io

    return io.load_model(pathlib.Path(workdir) / "lb.keras")


def history(workdir):
    return json.loads((pathlib.Path(workdir) / "lb_history.json").read_text())


def test_two_workers_resume_after_a_kill_and_train_as_one_process_writing_once(tmp_path):
    sys.path.insert(0, str(HERE))
    from multiworker_worker import EPOCHS, data

    alone, together = tmp_path / "alone", tmp_path / "together"
    run_alone(alone)

    # Worker 1 dies in epoch 2; the chief notices (missed heartbeats) and stops.
    codes, logs, first = run_cluster(together, kill=(2, 2))
    assert codes[1] == -signal.SIGKILL, logs[1][-3000:]
    assert codes[0] != 0, "the chief should stop when a worker dies"
    assert not (together / "lb.keras").exists()
    assert json.loads((together / "backup" / "backup.json").read_text())["epoch"] == 1
    # The same command on both machines resumes at epoch 2 ...
    codes, logs, second = run_cluster(together)
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]

    # ... and ends where one process ends, with the same global batch of 64
    # (here 2 workers x 32 with synchronized BN; the last batch of 9 cut into
    # 5 + 4, weighted): every epoch's f, and the model.
    one, two = history(alone), history(together)
    assert (one["replicas"], two["replicas"]) == (1, 2)
    assert two["strategy"] == "CollectiveAllReduceStrategy"  # tf.distribute.MultiWorker...
    f_one = [e["train_f"] for e in one["epochs"]]
    f_two = [e["train_f"] for e in two["epochs"]]
    assert len(f_two) == EPOCHS and f_two[-1] < f_two[0]
    np.testing.assert_allclose(f_two, f_one, rtol=1e-6)
    x, _ = data()
    model_one, model_two = load(alone), load(together)
    np.testing.assert_allclose(model_two.predict(x, verbose=0), model_one.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-4)
    for a, b in zip(model_one.weights, model_two.weights):
        # A Dense bias right before BN has no gradient (BN subtracts it): Adam
        # turns its rounding noise into full steps, and BN cancels it again.
        if a.path.startswith("dense") and a.path.endswith("bias"):
            continue
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-3, atol=1e-5,
                                   err_msg=a.path)

    # Only the chiefs (worker 0 of each launch) wrote.
    writers = {int(log.stem) for log in (together / "writes").iterdir()}
    assert writers == {first[0], second[0]}
    written = {pathlib.Path(p).name for log in (together / "writes").iterdir()
               for p in log.read_text().split()}
    assert written >= {"lb.keras", "lb_history.json", "best.npz", "backup.json"}


def test_measurements_across_two_workers_equal_one_process(tmp_path):
    codes, logs, _ = run_cluster(tmp_path, mode="measure")
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    for task in (0, 1):
        differences = json.loads((tmp_path / f"measure-{task}.json").read_text())
        assert differences.pop("replicas") == 2
        assert set(differences) == {"value", "gradient", "hvp", "phi", "lanczos", "trace"}
        for name, relative in differences.items():
            assert relative <= 1e-6, (task, name, relative)
    # Only the chief wrote the record store and the landscape figure; the
    # other worker drew its copy of the figure in a temporary folder.
    chief, other = sorted(([pathlib.Path(p) for p in log.read_text().split()]
                           for log in (tmp_path / "writes").iterdir()),
                          key=lambda written: tmp_path / "sharpness.json" not in written)
    assert tmp_path / "sharpness.json" in chief
    assert any(p.parent == tmp_path / "figures" for p in chief)
    assert other and not any(tmp_path in p.parents for p in other)
    records = json.loads((tmp_path / "sharpness.json").read_text())
    assert [r["measure"] for r in records] == ["landscape"]
    assert np.isfinite(records[0]["value"])


def test_a_lost_worker_is_one_line_and_says_how_to_resume(tmp_path):
    script = tmp_path / "lost.py"
    script.write_text(
        "import tensorflow as tf\n"
        "from keras_sharpness import cli\n"
        "def main(argv):\n"
        "    raise tf.errors.UnavailableError(None, None, 'Collective ops is aborted by: "
        "task 1 stopped sending heartbeats')\n"
        "cli.run(main)\n")
    done = subprocess.run([sys.executable, str(script)], env=environment(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "start the same command on every worker again to resume" in lines[0]


def test_the_commands_across_two_workers(tmp_path):
    """plot_parametric_plot.py and compute_sharpness.py, the same command on
    both workers: only the chief holds and writes the work directory."""
    repo, workdir = HERE.parent, tmp_path / "run"
    logged = ("import runpy, sys; sys.path.insert(0, {tests!r}); import multiworker_worker; "
              "multiworker_worker.log_writes({writes!r}); sys.argv = sys.argv[1:]; "
              "runpy.run_path(sys.argv[0], run_name='__main__')")
    commands = (
        ["plot_parametric_plot.py", "-n", "F1", "--dataset=digits", "--train_size=400",
         "--test_size=100", "--epochs=1", "--num_points=3", "--sb_batch_size=32",
         "--lb_batch_size=80", "--verbose=0"],
        ["compute_sharpness.py", "--dataset=digits", "--num_samples=200", "--maxiter=2"])
    for number, command in enumerate(commands):
        writes = tmp_path / f"writes{number}"
        code = logged.format(tests=str(HERE), writes=str(writes))
        cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
        workers = [subprocess.Popen(
            [sys.executable, "-c", code, *command, f"--workdir={workdir}",
             "--strategy=multiworker"], cwd=repo, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=environment({"cluster": cluster, "task": {"type": "worker", "index": i}}))
            for i in range(2)]
        try:
            logs = [w.communicate(timeout=TIMEOUT)[0] for w in workers]
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
        assert [w.returncode for w in workers] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
        writers = list(writes.iterdir())
        assert len(writers) == 1, "only the chief writes"
        written = {pathlib.Path(p).name for p in writers[0].read_text().split()}
        assert written >= ({"run.json", "sb.keras", "lb.keras", "parametric.json", "F1.pdf"}
                           if number == 0 else {"sharpness.json"})
    records = json.loads((workdir / "sharpness.json").read_text())
    assert sorted(r["model"] for r in records) == ["LB", "SB"]
