"""The seed notebook's calls, as written in the notebook, run on the package's engine."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cifar_resnet import channel_stats
from cifar_resnet.loader import CifarLoader
from cifar_resnet.notebook import (
    BaseModel,
    DeviceDataLoader,
    ResNet,
    evaluate,
    fit,
    get_default_device,
    plot_loss,
    predict_image,
    to_device,
)

pytestmark = pytest.mark.usefixtures("one_thread")

BLUE, RED = (31, 119, 180), (214, 39, 40)  # matplotlib's tab:blue and tab:red (training and validation loss)


def test_notebook_flow(tmp_path, capsys, synthetic, open_png, count_colour):
    data = synthetic(n_train=60, n_val=20)
    mean, std = channel_stats(data.train.images)
    train_dl = CifarLoader(data.train, 20, mean=mean, std=std, train=True)
    valid_dl = CifarLoader(data.val, 20, mean=mean, std=std)

    device = get_default_device()
    model = to_device(ResNet(3, 10, classes=data.classes), device)
    assert isinstance(model, BaseModel)

    # the notebook's cells
    history = [evaluate(model, valid_dl)]
    epochs = 2
    max_lr = 0.001
    grad_clip = 0.1
    weight_decay = 1e-5
    opt_func = torch.optim.Adam
    history += fit(
        epochs,
        train_dl,
        valid_dl,
        model,
        opt_func,
        max_lr,
        grad_clip,
        weight_decay,
        scheduler=torch.optim.lr_scheduler.OneCycleLR,
    )

    assert len(history) == 3
    assert set(history[1]) == {"val_loss", "val_acc", "train_loss", "lrs"}
    assert len(history[1]["lrs"]) == len(train_dl) == 3
    # one-cycle: rises then falls within the run
    lrs = history[1]["lrs"] + history[2]["lrs"]
    assert max(lrs) <= max_lr and lrs[0] < max(lrs) and lrs[-1] < max(lrs)
    out = capsys.readouterr().out
    assert out.count("Epoch ") == 2 and "last_lr: " in out and "val_acc: " in out
    assert out.splitlines()[0].startswith("Epoch 0, last_lr: ")

    fig_path = tmp_path / "loss.png"
    plot_loss(history, fig_path)
    pixels = open_png(fig_path, (640, 420))
    assert count_colour(pixels, BLUE) > 100 and count_colour(pixels, RED) > 100  # both curves

    img, _label = next(iter(valid_dl))
    name = predict_image(img[0], model)
    assert name in data.classes


def test_notebook_fit_with_torch_dataloader_and_instances(synthetic):
    """Plain torch DataLoaders (the notebook's) and ready-made optimizer/scheduler instances work too."""
    data = synthetic(n_train=40, n_val=20)
    x = torch.from_numpy(np.ascontiguousarray(data.train.images.transpose(0, 3, 1, 2))).float() / 255
    train_dl = DeviceDataLoader(
        DataLoader(TensorDataset(x, torch.from_numpy(data.train.labels)), batch_size=20, shuffle=True), "cpu"
    )
    model = ResNet(3, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    history = fit(1, train_dl, train_dl, model, opt, 0.01, None, 0, sched)
    assert len(history) == 1 and np.isfinite(history[0]["val_loss"])
