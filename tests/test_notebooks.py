"""The notebooks reproduce the papers' figures from the project's outputs: each one runs top to
bottom on its small settings, and is committed without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_the_figures_have_notebooks():
    names = {p.stem for p in NOTEBOOKS}
    for figure in ("subnet_statistics", "proxy_kendall_tau", "best_ne_vs_models",
                   "method_families", "rl_ablations", "pareto_report"):
        assert any(figure in n for n in names), figure


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_top_to_bottom(path, tmp_path, monkeypatch):
    # the kernel inherits this environment: small settings, outputs in tmp, one thread
    monkeypatch.setenv("RANKITECT_NOTEBOOK_SCALE", "small")
    monkeypatch.setenv("RANKITECT_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    book = nbformat.read(path, as_version=4)
    client = NotebookClient(
        book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    assert any(p.suffix == ".png" for p in tmp_path.rglob("*")), "the notebook drew no figure"
