"""The examples notebook runs top to bottom on CPU (its code cells, in order, in one namespace)."""

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parent.parent / "examples" / "eager_vs_compiled.ipynb"


@pytest.mark.slow
def test_eager_vs_compiled_notebook_runs_and_agrees(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NOTEBOOK_MAX_NEW_TOKENS", "8")
    monkeypatch.setenv("NOTEBOOK_PLOT", str(tmp_path / "plot.png"))
    namespace: dict = {}
    for cell in json.loads(NOTEBOOK.read_text())["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), str(NOTEBOOK), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "greedy tokens identical to eager: True" in printed
    assert namespace["compiled_count"] == namespace["eager_count"]
    if namespace["plt"] is not None:
        assert (tmp_path / "plot.png").stat().st_size > 0
