"""Files of earlier versions keep loading: legacy keys are upgraded on read.

No TensorFlow here: these run in seconds.
"""

import json
import pathlib

import pytest

from keras_sharpness import io, migrate

REPO = pathlib.Path(__file__).resolve().parents[1]
OLD_NAMES = sorted(migrate.LEGACY_KEYS)


def test_read_json_renames_every_legacy_key_at_any_depth(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"bn_mode": "batch", "records": [
        {"bn_semantics": "recompute", "train_f": {"eval_statistics": "moving"}}]}))
    assert io.read_json(path) == {"bn_eval": "batch", "records": [
        {"bn_eval": "recompute", "train_f": {"bn_eval": "moving"}}]}


def test_migrate_files_rewrites_old_files_once_and_leaves_others(tmp_path):
    (tmp_path / "sub").mkdir()
    old = tmp_path / "sub" / "run.json"
    old.write_text(json.dumps({"bn_mode": "moving", "seed": 3}))
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"bn_eval": "batch"}))
    before = new.stat().st_mtime_ns
    assert migrate.migrate_files([tmp_path], echo=lambda *_: None) == [old]
    assert json.loads(old.read_text()) == {"bn_eval": "moving", "seed": 3}
    assert new.stat().st_mtime_ns == before
    assert migrate.migrate_files([tmp_path], echo=lambda *_: None) == []


def test_old_sharpness_records_are_read_in_the_one_schema(tmp_path):
    experiment_record = {"phi": 2.5, "f0": 0.1, "eps": 1e-3, "subspace_dim": 0,
                         "phi_paper": 2.0, "start": "zero"}
    cli_record = {"model": "SB", "eps": 1e-3, "subspace_dim": 0, "sharpness": 4.0,
                  "per_start": [{"start": "zero", "phi": 1.0, "phi_paper": 1.0},
                                {"start": "corner", "phi": 4.0, "phi_paper": 3.0}]}
    other = {"phi": 0.3, "angle": True}  # not a record: left alone
    old = {"value": {"sb": {"sharpness": [experiment_record]}}, "records": [cli_record],
           "other": other}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    new = io.read_json(path)
    assert new["value"]["sb"]["sharpness"] == [{"sharpness": 2.5, "f0": 0.1, "eps": 1e-3,
                                                "subspace_dim": 0, "phi_paper": 2.0,
                                                "start": "zero"}]
    assert list(new["value"]["sb"]["sharpness"][0])[0] == "sharpness"  # order kept
    assert new["records"][0]["per_start"] == [
        {"start": "zero", "sharpness": 1.0, "phi_paper": 1.0},
        {"start": "corner", "sharpness": 4.0, "phi_paper": 3.0}]
    assert new["other"] == other
    assert migrate.needs_upgrade(old) and not migrate.needs_upgrade(new)
    assert not migrate.needs_upgrade(other)
    assert migrate.migrate_files([path], echo=lambda *_: None) == [path]
    assert json.loads(path.read_text()) == new


def test_regenerated_f1_tables_match_the_committed_ones():
    """tables.md of F1_trials, made before one schema, from its per-trial records."""
    from keras_sharpness.experiments import trials
    from keras_sharpness.measure import MeasureSettings

    folder = REPO / "results" / "F1_trials"
    stored = io.read_json(folder / "tables.json")
    settings = MeasureSettings(**stored["settings"])
    data, text = trials.tables(stored["per_trial"], stored["network"], settings)
    assert text == (folder / "tables.md").read_text()
    for table in ("table2", "table3", "table4", "table3_comparison", "table4_comparison",
                  "distance_ratio"):
        assert data[table] == stored[table], table
    assert data["table3"]["0.001"]["lb"]["n"] == 5


def test_a_batchnorm_layer_saved_under_the_old_key_loads_with_its_choice():
    from keras_sharpness.layers import SwitchableBatchNormalization

    config = SwitchableBatchNormalization(bn_eval="moving").get_config()
    config["eval_statistics"] = config.pop("bn_eval")
    assert SwitchableBatchNormalization.from_config(config).bn_eval == "moving"


@pytest.mark.parametrize("path", sorted((REPO / "results").rglob("*.json")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_committed_results_use_todays_names(path):
    assert not migrate.needs_upgrade(json.loads(path.read_text())), (
        f"run python -m keras_sharpness.migrate {path}")
