"""The students' notebook (notebooks/alexnet_tour.ipynb) runs top to bottom and shows what it promises.

It is committed without outputs (README, "Start here"): this test is what runs it, on every fresh clone."""

import re
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "alexnet_tour.ipynb"
# The cells that draw, and how many pictures each draws at least.
PICTURES = {"figure-towers": 1, "figure-input": 3, "figure-curves": 1, "figure-kernels": 1,
            "figure-predictions": 1, "figure-neighbours": 1}


def _tagged(notebook, tag):
    cells = [c for c in notebook.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"one cell tagged {tag}, found {len(cells)}"
    return cells[0]


def _text(cell):
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def test_the_committed_notebook_holds_no_outputs():
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    stale = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not stale, f"cells {stale} were committed with outputs: clear them (Kernel > Restart & Clear Output)"


@pytest.mark.heavy
def test_the_notebook_runs_top_to_bottom_and_shows_every_picture(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # what the notebook writes (tempfile.mkdtemp) goes there
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # A cell that raises fails the test with its traceback (nbclient's CellExecutionError).
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    for tag, least in PICTURES.items():
        drawn = sum("image/png" in o.get("data", {}) for o in _tagged(notebook, tag).outputs)
        assert drawn >= least, f"{tag}: {drawn} picture(s), expected at least {least}"
    placement = _text(_tagged(notebook, "placement"))
    for tower, device in (("a", "CPU:0"), ("b", "CPU:1")):
        for layer in ("conv1", "conv3", "fc6", "fc7"):
            assert re.search(rf"^{layer}_{tower}\s+/device:{device}$", placement, re.M), placement
    differences = re.findall(r"vs the layer.*largest difference (\S+)", _text(_tagged(notebook, "lrn")))
    assert len(differences) == 2 and all(float(d) < 1e-4 for d in differences), differences
    pretrained = _text(_tagged(notebook, "pretrained"))
    assert pretrained.startswith("Skipped: no bvlc_alexnet weights") or "image/png" in str(
        _tagged(notebook, "pretrained").outputs)
