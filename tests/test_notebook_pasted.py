"""The seed notebook's training, plotting and prediction cells, pasted verbatim after one import, run on
the package's engine (the notebook builds its network as ``ResNet(3, 100)``)."""

from __future__ import annotations

import textwrap
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cifar_resnet import notebook, plots
from cifar_resnet.data import CIFAR100_CLASSES

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# The notebook's cells, as written there (the data cells, which build train_dl/valid_dl/test_ds from
# torchvision, are replaced by the set-up below).
CELLS = textwrap.dedent("""
    device = get_default_device()
    train_dl = DeviceDataLoader(train_dl, device)
    valid_dl = DeviceDataLoader(valid_dl, device)

    model = to_device(ResNet(3, 100), device)

    history = [evaluate(model, valid_dl)]

    epochs = 2
    max_lr = 0.001
    grad_clip = 0.1
    weight_decay = 1e-5
    opt_func = torch.optim.Adam

    history += fit(epochs, train_dl, valid_dl, model, opt_func, max_lr, grad_clip, weight_decay,
                   scheduler=torch.optim.lr_scheduler.OneCycleLR)

    plot_loss(history)

    img, label = test_ds[0]
    print('Label:', dataset.classes[label], ', Predicted:', predict_image(img, model))
""")


class _Dataset(TensorDataset):
    classes: ClassVar[list[str]] = list(CIFAR100_CLASSES)


def test_the_notebooks_cells_run_unchanged(capsys):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(48, 3, 32, 32, generator=gen)
    y = torch.randint(0, 100, (48,), generator=gen)
    dataset = _Dataset(x, y)
    namespace = {
        "torch": torch,
        "train_dl": DataLoader(dataset, batch_size=16, shuffle=True),
        "valid_dl": DataLoader(dataset, batch_size=16),
        "test_ds": dataset,
        "dataset": dataset,
    }
    # pasting is the point: the notebook's own text runs, as a user's notebook would run it
    exec("from cifar_resnet.notebook import *", namespace)  # noqa: S102
    exec(CELLS, namespace)  # noqa: S102

    out = capsys.readouterr().out.splitlines()
    epoch_lines = [line for line in out if line.startswith("Epoch ")]
    assert [line.split(",")[0] for line in epoch_lines] == ["Epoch 0", "Epoch 1"]
    assert all("last_lr: " in line and "val_acc: " in line for line in epoch_lines)
    label, predicted = out[-1].removeprefix("Label: ").split(" , Predicted: ")
    assert label == CIFAR100_CLASSES[int(y[0])] and predicted in CIFAR100_CLASSES
    history = namespace["history"]
    assert len(history) == 3 and all(np.isfinite(h["val_loss"]) for h in history)
    assert sum(p.numel() for p in namespace["model"].parameters()) == 7_500_132  # the notebook's network


def test_notebook_names_are_the_packages_own_objects():
    """One plot_loss, not an adapter beside it; the network is seed_resnet's layers."""
    assert notebook.plot_loss is plots.plot_loss
    model = notebook.ResNet(3, 100)
    assert model.net.model_name == "seed_resnet"
    with pytest.raises(ValueError, match="in_channels 3"):
        notebook.ResNet(1, 100)
    assert {
        "ResNet",
        "fit",
        "evaluate",
        "plot_loss",
        "predict_image",
        "to_device",
        "DeviceDataLoader",
        "get_default_device",
    } <= set(notebook.__all__)
