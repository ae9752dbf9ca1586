"""The one sweep and the one record schema (keras_sharpness.measure)."""

import dataclasses
import json
import pathlib
import types

import numpy as np
import pytest

from keras_sharpness import measure, metric
from keras_sharpness.errors import UserError
from keras_sharpness.measure import MeasureSettings

#: Every field of a record (docstring of keras_sharpness.measure).
SCHEMA = set(measure.RECORD_KEY) | {
    "network", "checkpoint", "dataset", "versions",
    "sharpness", "phi_paper", "f0", "fmax", "f_final", "p", "num_params", "iterations",
    "evaluations", "message", "seconds", "objective_seconds", "projection_seconds",
    "solver_seconds", "ascent", "converged", "solver_options", "num_train_samples",
    "best_start", "per_start"}
CONTEXT = dict(network="toy", checkpoint=None, dataset="toy", versions={})


class Quadratic:
    """f(w) = 1/2 |w|^2 + 0.1: the objective interface without TensorFlow."""

    num_params = 3
    bn_eval, batch_size, num_samples = None, 7, 11

    def initial_point(self):
        return np.array([1.0, -2.0, 0.5])

    def value(self, w, non_trainable=None):
        return 0.5 * float(w @ w) + 0.1

    def value_and_gradient(self, w, non_trainable=None):
        return self.value(w), np.array(w, dtype=np.float64)


@pytest.mark.parametrize("kwargs, message", [
    ({"eps": (0.0,)}, "eps"),
    ({"eps": 1e-3}, "eps must be a list"),
    ({"subspace_dims": (-1,)}, "subspace_dim"),
    ({"subspace_dims": (2.5,)}, "subspace_dims"),
    ({"maxiter": 0}, "maxiter"),
    ({"start": "zero,middle"}, "unknown start"),
    ({"start": " , "}, "start"),
    ({"bn_eval": "recompute"}, "unknown bn_eval"),
    ({"eval_batch_size": 0}, "batch size of f must be a positive integer"),
    ({"num_samples": 0}, "num_samples"),
    ({"hessian_topk": -1}, "hessian_topk must be 0 (skip) or a positive integer"),
    ({"hessian_trace_probes": 1.5}, "hessian_trace_probes"),
    ({"subspace_scale": "unit"}, "subspace scale"),
    ({"measures": "sharpness,curvature"}, "unknown measure 'curvature'"),
    ({"measures": ""}, "unknown measure"),
    ({"adaptive_rho": 0.0}, "adaptive_rho must be a finite number > 0"),
    ({"adaptive_rho": float("nan")}, "adaptive_rho"),
    ({"adaptive_norm": "l1"}, "adaptive_norm must be l2 or linf"),
    ({"trace_rtol": 2.0}, "trace_rtol must be a finite number >= 0 and <= 1"),
    ({"lanczos_steps": 1}, "lanczos_steps"),
    ({"m_sharpness": -4}, "m_sharpness must be 0 (the whole subset) or a positive integer"),
    ({"pac_bayes_target": -0.1}, "pac_bayes_target"),
    ({"landscape_points": 2}, "landscape_points"),
    ({"landscape_points": 20}, "landscape_points must be odd"),
])
def test_bad_settings_are_one_line_user_errors(kwargs, message):
    with pytest.raises(UserError) as info:
        MeasureSettings(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_settings_keep_the_keys_of_stored_measurements():
    # The key of results/F1_trials/trial*/measurements.json.
    assert MeasureSettings().to_dict() == {
        "eps": [0.001, 0.0005], "subspace_dims": [0, 100], "maxiter": 10, "start": "zero",
        "bn_eval": "batch", "eval_batch_size": 1000, "num_samples": None, "seed": 0}
    settings = MeasureSettings(eps=[5e-4], subspace_dims=[100], subspace_scale="normalized",
                               start="zero, corner,zero", hessian_topk=2)
    assert settings.eps == (5e-4,) and settings.starts == ["zero", "corner"]
    assert settings.to_dict()["subspace_scale"] == "normalized"
    assert settings.to_dict()["hessian_topk"] == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.maxiter = 3


def test_a_record_has_the_one_schema():
    settings = MeasureSettings(eps=(0.1,), subspace_dims=(0,), maxiter=5, start="zero,corner",
                               eval_batch_size=7)
    best, per_start = metric.sharpness_multistart(Quadratic(), starts=settings.starts, eps=0.1,
                                                  maxiter=5)
    record = measure.make_record(best, settings, model="Q", per_start=per_start, **CONTEXT)
    assert set(record) == SCHEMA and "phi" not in record
    assert record["sharpness"] == best.phi > 0 and record["phi_paper"] is None
    assert record["start"] == "zero,corner" and record["best_start"] == best.start
    assert record["bn_eval"] == "none" and record["subspace_scale"] == "identity"
    assert record["batch_size"] == 7 and record["num_samples"] is None
    assert record["num_train_samples"] == 11
    assert [set(s) for s in record["per_start"]] == [
        {"start", "sharpness", "phi_paper", "iterations", "message"}] * 2
    assert record["sharpness"] == max(s["sharpness"] for s in record["per_start"])
    assert measure.record_key(record) == ("sharpness", "Q", None, 0.1, 0, 5, 0, "zero,corner", "none", 7,
                                          None, "identity", None)
    json.dumps(record)  # JSON-ready
    # SharpnessResult.to_dict speaks the same names.
    assert best.to_dict()["sharpness"] == best.phi and "phi" not in best.to_dict()


@pytest.fixture(scope="module")
def toy():
    from toy_models import tanh_bn_model, toy_data

    x, y = toy_data(40)
    return tanh_bn_model(), types.SimpleNamespace(x_train=x, y_train=y)


def test_sweep_writes_every_record_and_reuses_it(toy, tmp_path, monkeypatch):
    model, data = toy
    settings = MeasureSettings(eps=(1e-2, 5e-3), subspace_dims=(0, 3), maxiter=3,
                               eval_batch_size=20)
    store = tmp_path / "records.json"
    lines = []
    first = measure.sweep([("toy", model)], data, settings, store, echo=lines.append)
    assert [(r["subspace_dim"], r["eps"]) for r in first] == [(0, 1e-2), (0, 5e-3),
                                                               (3, 1e-2), (3, 5e-3)]
    assert all(r["checkpoint_sha256"] is None and r["model"] == "toy" for r in first)
    assert json.loads(store.read_text()) == first
    assert sum(" iter " in line for line in lines) == sum(r["iterations"] for r in first)
    assert any(line.startswith("toy p=3 eps=0.005: phi=") for line in lines)

    def forbidden(*args, **kwargs):
        raise AssertionError("a stored record was recomputed")

    # Again: nothing is computed and the data are never asked for.
    with monkeypatch.context() as patch:
        patch.setattr(metric, "sharpness_multistart", forbidden)
        lines.clear()
        assert measure.sweep([("toy", model)], forbidden, settings, store,
                             echo=lines.append) == first
        assert len(lines) == 4 and all("reusing" in line for line in lines)
    # overwrite recomputes, to the same numbers.
    again = measure.sweep([("toy", model)], data, settings, store, overwrite=True, echo=None)
    assert [r["sharpness"] for r in again] == [r["sharpness"] for r in first]


def test_an_interrupted_sweep_keeps_its_finished_records(toy, tmp_path, monkeypatch):
    model, data = toy
    settings = MeasureSettings(eps=(1e-2, 5e-3), subspace_dims=(0,), maxiter=2,
                               eval_batch_size=20)
    real = metric.sharpness_multistart
    calls = []

    def dies_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(metric, "sharpness_multistart", dies_second)
    store = tmp_path / "records.json"
    with pytest.raises(KeyboardInterrupt):
        measure.sweep([("toy", model)], data, settings, store, echo=None)
    assert [r["eps"] for r in json.loads(store.read_text())] == [1e-2]


def test_sweep_refuses_bad_input_in_one_line(toy, tmp_path):
    model, data = toy
    settings = MeasureSettings(eps=(1e-2,), subspace_dims=(0,), maxiter=1)
    with pytest.raises(UserError, match="two models are labelled 'a'"):
        measure.sweep([("a", model), ("a", model)], data, settings, tmp_path / "r.json")
    with pytest.raises(UserError, match="a model to measure is"):
        measure.sweep([model], data, settings, tmp_path / "r.json")
    with pytest.raises(UserError, match="exceeds the number of weights"):
        measure.sweep([("a", model)], data, MeasureSettings(eps=(1e-2,), subspace_dims=(10**6,)),
                      tmp_path / "r.json")
    (tmp_path / "r.json").write_text("{}")
    with pytest.raises(UserError, match="not a list of measurement records"):
        measure.sweep([("a", model)], data, settings, tmp_path / "r.json")


def test_measures_are_named_once_and_ordered():
    settings = MeasureSettings(measures="noise_scale, accuracy,sharpness")
    assert settings.measures == ("sharpness", "accuracy", "noise_scale")
    assert MeasureSettings(measures="all").measures == tuple(measure.MEASURES)
    # The Hessian flags of earlier versions add their measure; the measure alone has a k.
    assert MeasureSettings(hessian_topk=3).measures == ("sharpness", "hessian_top")
    assert MeasureSettings(measures="hessian_top").hessian_topk == 1
    assert MeasureSettings(measures="hessian_trace").params("hessian_trace") == {
        "probes": 100, "rtol": 0.01}
    every_field = {f.name for f in dataclasses.fields(MeasureSettings)}
    for m in measure.MEASURES.values():
        assert set(m.params.values()) <= every_field and m.summary and m.value


def test_registry_measures_are_records_of_the_same_store(toy, tmp_path, monkeypatch):
    from keras_sharpness import hessian

    model, data = toy
    data.x_test, data.y_test = data.x_train[:10], data.y_train[:10]
    settings = MeasureSettings(eps=(1e-2,), subspace_dims=(0,), maxiter=2, eval_batch_size=20,
                               measures="sharpness,accuracy,hessian_top", hessian_topk=2)
    store = tmp_path / "records.json"
    first = measure.sweep([("toy", model)], data, settings, store, echo=None)
    assert [r.get("measure", "sharpness") for r in first] == ["accuracy", "sharpness",
                                                              "hessian_top"]
    top = first[-1]
    assert top["params"] == {"k": 2} and top["bn_eval"] == "batch"
    objective = measure.training_loss(model, data.x_train, data.y_train, settings)
    exact = hessian.top_eigenvalues(objective, 2).eigenvalues
    assert top["result"]["eigenvalues"] == pytest.approx(exact, rel=1e-4)
    assert top["value"] == top["result"]["eigenvalues"][0]
    assert json.loads(store.read_text()) == first

    def forbidden(*args, **kwargs):
        raise AssertionError("a stored record was recomputed")

    monkeypatch.setattr(hessian, "top_eigenvalues", forbidden)
    assert measure.sweep([("toy", model)], forbidden, settings, store, echo=None) == first
    # Another k is another record; the first one stays.
    monkeypatch.undo()
    more = dataclasses.replace(settings, hessian_topk=3, measures=("hessian_top",))
    [three] = measure.sweep([("toy", model)], data, more, store, echo=None)
    assert three["params"] == {"k": 3} and len(three["result"]["eigenvalues"]) == 3
    assert len(json.loads(store.read_text())) == 4


def test_every_measure_in_one_sweep_is_stored_and_reused(toy, tmp_path, monkeypatch):
    model, data = toy
    data.x_test, data.y_test = data.x_train[:10], data.y_train[:10]
    settings = MeasureSettings(
        eps=(1e-2,), subspace_dims=(0,), maxiter=2, eval_batch_size=20, measures="all",
        hessian_trace_probes=10, density_probes=2, lanczos_steps=8, adaptive_steps=3,
        adaptive_samples=4, pac_bayes_samples=2, noise_bootstrap=100, noise_group_size=10,
        landscape_points=5)
    store = tmp_path / "run" / "sharpness.json"
    lines = []
    first = measure.sweep([("toy", model)], data, settings, store, echo=lines.append)
    assert [r.get("measure", "sharpness") for r in first] == [
        "accuracy", "sharpness", *list(measure.MEASURES)[2:]]
    for record in first[2:]:
        assert record["params"] == settings.params(record["measure"])
        assert record["value"] is None or np.isfinite(record["value"])
        assert record["num_train_samples"] == 40 and record["bn_eval"] == "batch"
        assert all(pathlib.Path(f).stat().st_size > 0 for f in record["figures"])
        assert any(line.startswith(f"toy {record['measure']}: {record['value_name']} = ")
                   for line in lines)
    figures = {r["measure"]: r["figures"] for r in first[2:] if r["figures"]}
    assert sorted(figures) == ["landscape", "spectral_density"]
    assert json.loads(store.read_text()) == first

    def forbidden(*args, **kwargs):
        raise AssertionError("a stored record was recomputed")

    for name, m in measure.MEASURES.items():
        if m.take is not None:
            monkeypatch.setitem(measure.MEASURES, name, dataclasses.replace(m, take=forbidden))
    monkeypatch.setattr(metric, "sharpness_multistart", forbidden)
    monkeypatch.setattr(measure, "accuracy_and_loss", forbidden)
    assert measure.sweep([("toy", model)], forbidden, settings, store, echo=None) == first
