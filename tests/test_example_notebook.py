"""examples/cifar100_resnet.ipynb runs from top to bottom (a tiny configuration, on real images), and the
copy in the repository is saved with the outputs of a real run."""

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "cifar100_resnet.ipynb"


def outputs(nb, kind=None):
    for cell in nb.cells:
        if cell.cell_type == "code":
            for out in cell.get("outputs", []):
                if kind is None or out.get("output_type") == kind or kind in out.get("data", {}):
                    yield cell, out


def stream_text(nb) -> str:
    return "".join(out.get("text", "") for _, out in outputs(nb, "stream"))


def test_saved_notebook_has_the_outputs_of_a_real_run():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c.get("outputs") for c in code), "save the notebook with its outputs"
    assert not any(o.get("output_type") == "error" for c in code for o in c["outputs"])
    text = "".join("".join(o.get("text", "")) for c in code for o in c["outputs"])
    assert "Epoch 1, last_lr: " in text and "Label: " in text and "top-1" in text
    assert sum("image/png" in o.get("data", {}) for c in code for o in c["outputs"]) >= 4


def test_notebook_runs_top_to_bottom(real_npz, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="needs nbformat (pip install nbformat)")
    nbclient = pytest.importorskip("nbclient", reason="needs nbclient and ipykernel (pip install nbclient ipykernel)")
    pytest.importorskip("ipykernel", reason="needs ipykernel (pip install ipykernel)")
    for name, value in {
        "CIFAR_DATA": str(real_npz),
        "NB_MODEL": "fast",
        "NB_MODEL_KWARGS": '{"widths": [8, 16, 16], "stem_width": 8}',
        "NB_TRAIN_SUBSET": "1000",
        "NB_VAL_SPLIT": "200",
        "NB_EPOCHS": "1",
        "NB_OUT": str(tmp_path / "run"),
        # tiny layers on a shared machine: one thread each avoids OpenMP synchronisation stalls
        "OMP_NUM_THREADS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()  # raises on any error
    text = stream_text(nb)
    assert "Epoch 1, last_lr: " in text and "seed_resnet: 7,500,132 parameters" in text
    assert "Label: " in text and ", Predicted: " in text
    assert sum(1 for _ in outputs(nb, "image/png")) >= 4  # samples, loss curve, lr curve, prediction
    assert (tmp_path / "run" / "best.pt").is_file()
