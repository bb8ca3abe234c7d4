"""The notebooks in notebooks/ (jupytext percent format) execute top to bottom in a Jupyter
kernel on the session's tiny run, and every cell that ends in a figure displays a plotly one."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.py"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path: Path, tiny_run: Path, monkeypatch, tmp_path):
    import jupytext
    from nbclient import NotebookClient

    monkeypatch.setenv("MECHBD_RUN", str(tiny_run))
    monkeypatch.setenv("MECHBD_N_EVAL", "8")
    nb = jupytext.read(path)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    n_figs = sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs)
    assert n_figs >= 1, f"{path.name} displayed no plotly figure"
