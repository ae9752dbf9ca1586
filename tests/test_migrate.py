"""Files of earlier versions keep loading: legacy keys are upgraded on read."""

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
