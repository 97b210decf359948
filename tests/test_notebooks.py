"""Every notebook runs top to bottom on the built-in data, and is stored without outputs."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
SMALL = {"events": 30_000}


def with_parameters(notebook: nbformat.NotebookNode, values: dict) -> nbformat.NotebookNode:
    """Insert an overriding cell after the one tagged 'parameters', as papermill does."""
    for index, cell in enumerate(notebook.cells):
        if "parameters" in cell.metadata.get("tags", []):
            lines = "\n".join(f"{k} = {v!r}" for k, v in values.items())
            injected = nbformat.v4.new_code_cell(f"# injected by the test\n{lines}")
            notebook.cells.insert(index + 1, injected)
            return notebook
    raise AssertionError("no cell is tagged 'parameters'")


def test_there_are_five_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_explore.ipynb", "02_recommender.ipynb",
                                           "03_propensity.ipynb", "04_promote.ipynb",
                                           "05_kpis.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_parameters_come_first(path):
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])


def parameters_of(path: Path, environment: dict[str, str]) -> dict:
    """The parameters cell run as Jupyter runs it: in the notebook's folder."""
    import os
    import subprocess
    import sys

    cell = nbformat.read(path, as_version=4).cells[1].source
    probe = cell + "\nimport json; print(json.dumps({'data_dir': str(data_dir)}))"
    environ = {k: v for k, v in os.environ.items() if k != "NEXTBEST_DATA_DIR"} | environment
    result = subprocess.run([sys.executable, "-c", probe], cwd=path.parent, env=environ,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_notebook_uses_the_demos_data_unless_told_otherwise(path, tmp_path):
    project = path.parents[1]
    default = Path(path.parent / parameters_of(path, {})["data_dir"]).resolve()
    assert default == project / ".nextbest"  # where `make demo` puts the shop and the registry
    told = parameters_of(path, {"NEXTBEST_DATA_DIR": str(tmp_path)})["data_dir"]
    assert Path(told) == tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_notebook_runs_top_to_bottom(path, tmp_path):
    notebook = with_parameters(nbformat.read(path, as_version=4),
                               {**SMALL, "data_dir": str(tmp_path / "data")})
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"{path.name} failed:\n{error}", pytrace=False)
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(o.get("output_type") in ("display_data", "execute_result") for o in outputs)
    if path.name != "04_promote.ipynb":  # every other notebook draws charts, shown inline
        assert any("image/png" in o.get("data", {}) for o in outputs), path.name
