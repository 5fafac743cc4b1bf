"""The exploration notebook runs top to bottom on the bundled sample."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient


@pytest.mark.slow
def test_explore_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = nbformat.read(REPO / "notebooks" / "explore.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "store the notebook without outputs"
    monkeypatch.setenv("GEOSEG_NOTEBOOK_WORKDIR", str(tmp_path))
    monkeypatch.setenv("GEOSEG_NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("GEOSEG_NOTEBOOK_SAMPLES", "4")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "notebooks")}})
    client.execute()
    assert (tmp_path / "buildings.gpkg").exists()
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "f1" in text
    assert "mean probability inside predicted buildings" in text  # the xarray maps section ran
