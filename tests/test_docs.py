"""The documentation's code runs as written."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_measure_your_own_model_page_runs(capsys):
    blocks = python_blocks(REPO / "docs" / "own_model.md")
    assert blocks
    namespace = {}
    for block in blocks:
        exec(compile(block, "docs/own_model.md", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "BN: batch | softmax removed: True" in out
    result = namespace["result"]
    assert result.phi >= result.phi_paper >= 0 and len(result.ascent) == result.iterations


def test_parametric_plot_page_snippet_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the snippet writes under runs/
    blocks = python_blocks(REPO / "docs" / "parametric_plot.md")
    assert len(blocks) == 1
    namespace = {}
    exec(compile(blocks[0], "docs/parametric_plot.md", "exec"), namespace)  # noqa: S102
    assert "reusing finished" in capsys.readouterr().out
    assert (tmp_path / "runs" / "demo_script" / "F1.pdf").is_file()
    assert (tmp_path / "runs" / "demo_script" / "F1_recomputed.png").is_file()


def test_public_api_resolves_every_name_lazily():
    import keras_sharpness as ks

    for name in ks.__all__:
        assert getattr(ks, name).__module__.startswith("keras_sharpness")
        assert name in dir(ks)
