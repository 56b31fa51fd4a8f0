"""Tests for the model registry and the three model families (CPU, batch 2, a few seconds in all)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cifar_resnet.models import (
    BasicBlock,
    Bottleneck,
    FastNet,
    create_model,
    is_model,
    list_models,
    model_default_kwargs,
    model_kwargs_names,
    register_model,
)
from cifar_resnet.models.seed import IdentityBlock

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def batch(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------


def test_list_models_sorted_and_complete():
    names = list_models()
    assert names == sorted(names)
    assert set(names) >= {"seed_resnet", "fast", "fast_small", *RESNETS}
    assert all(is_model(n) for n in names) and not is_model("nope")


@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_backward_and_round_trip(name):
    torch.manual_seed(0)
    x = batch()
    for num_classes in (10, 100):
        model = create_model(name, num_classes=num_classes)
        assert model.model_name == name
        assert model.model_kwargs["num_classes"] == num_classes
        assert json.loads(json.dumps(model.model_kwargs)) == model.model_kwargs
        if num_classes == 10:  # train mode, forward + backward
            model.train()
            out = model(x)
            F.cross_entropy(out, torch.tensor([0, 1])).backward()
            grads = [p.grad for p in model.parameters() if p.requires_grad]
            assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
        else:  # eval mode, forward only
            model.eval()
            with torch.no_grad():
                out = model(x)
        assert out.shape == (2, num_classes)
        assert torch.isfinite(out).all()

    # rebuilding from (model_name, model_kwargs) alone gives the same architecture
    with torch.device("meta"):
        rebuilt = create_model(model.model_name, **model.model_kwargs)
    assert rebuilt.model_kwargs == model.model_kwargs
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes


def test_model_kwargs_include_defaults_and_are_json():
    model = create_model("fast_small", num_classes=10, widths=(16, 32, 64))
    assert model.model_kwargs == {**model_default_kwargs("fast_small"), "num_classes": 10, "widths": [16, 32, 64]}
    assert model_kwargs_names("resnet18") == ["num_classes", "zero_init_residual"]
    assert model_kwargs_names("seed_resnet") == ["num_classes"]


def test_unknown_model_name():
    with pytest.raises(ValueError, match=r"unknown model 'resnet19'; available: .*resnet18.*seed_resnet"):
        create_model("resnet19")
    with pytest.raises(ValueError, match="unknown model"):
        model_kwargs_names("resnet19")


def test_unknown_keyword_arguments_named_with_accepted_ones():
    with pytest.raises(ValueError) as info:
        create_model("resnet18", zero_init_resdual=True, dropout=0.1)
    msg = str(info.value)
    assert "dropout" in msg and "zero_init_resdual" in msg
    assert "accepted: num_classes, zero_init_residual" in msg
    with pytest.raises(ValueError, match="widths"):
        create_model("seed_resnet", widths=[1, 2, 3])


@pytest.mark.parametrize("bad", [1, 0, -3, True, 2.5, "10"])
def test_bad_num_classes(bad):
    with pytest.raises(ValueError, match="num_classes"):
        create_model("seed_resnet", num_classes=bad)


def test_non_json_kwargs_rejected():
    with pytest.raises(ValueError, match="logit_scale"):
        create_model("fast_small", logit_scale=object())
    with pytest.raises(ValueError, match="logit_scale"):
        create_model("fast_small", logit_scale=float("nan"))


def test_register_model_rules():
    with pytest.raises(TypeError, match="num_classes"):

        @register_model
        def no_classes(width: int = 3) -> nn.Module:  # pragma: no cover - never built
            return nn.Linear(width, 2)

    with pytest.raises(TypeError, match=r"\*\*kwargs"):

        @register_model
        def var_kw(num_classes: int = 100, **kwargs) -> nn.Module:  # pragma: no cover
            return nn.Linear(2, num_classes)

    assert not is_model("no_classes") and not is_model("var_kw")


# ---------------------------------------------------------------------------------------------------
# The seed network
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seed_model():
    torch.manual_seed(0)
    return create_model("seed_resnet", num_classes=100).eval()


def test_seed_parameter_count(seed_model):
    assert n_params(seed_model) == 7_500_132
    assert n_params(create_model("seed_resnet", num_classes=10)) == 7_500_132 - 90 * 1025


def test_seed_identity_blocks_are_shared(seed_model):
    # one IdentityBlock module per stage, called 3, 4 and 2 times in forward
    stages = [seed_model.stage1, seed_model.stage2, seed_model.stage3]
    assert sum(isinstance(m, IdentityBlock) for m in seed_model.modules()) == 3
    calls = [0, 0, 0]
    handles = [
        s.identity.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, s in enumerate(stages)
    ]
    try:
        with torch.no_grad():
            seed_model(batch())
    finally:
        for h in handles:
            h.remove()
    assert calls == [3, 4, 2]
    # their parameters appear once each
    names = [n for n, _ in seed_model.named_parameters()]
    assert sum(n.startswith("stage1.identity.") for n in names) == 8  # 2 convs + 2 BNs, weight + bias
    assert [n_params(s.identity) for s in stages] == [164_800, 657_280, 2_625_280]


def test_seed_shapes_15x15_after_stem_and_4x4_before_pool(seed_model):
    shapes = {}
    hooks = [
        getattr(seed_model, n).register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape)))
        for n in ("stem", "stage1", "stage2", "stage3")
    ]
    with torch.no_grad():
        seed_model(batch())
    for h in hooks:
        h.remove()
    assert shapes == {
        "stem": (2, 64, 15, 15),
        "stage1": (2, 256, 15, 15),
        "stage2": (2, 512, 8, 8),
        "stage3": (2, 1024, 4, 4),
    }
    assert any(isinstance(m, nn.MaxPool2d) for m in seed_model.stem)


def test_seed_flops_about_one_gflop(seed_model):
    # FlopCounterMode counts a multiply-add as 2 FLOPs (convs and linear only): 0.498 GMAC = 0.997 GFLOP
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        seed_model(batch(1))
    flops = counter.get_total_flops()
    assert abs(flops / 1e9 - 1.0) < 0.05, flops


def test_seed_channels_last_matches(seed_model):
    x = batch()
    with torch.no_grad():
        ref = seed_model(x)
        cl = copy.deepcopy(seed_model).to(memory_format=torch.channels_last)
        out = cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# Standard ResNets
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,count",
    [
        ("resnet18", 11_220_132),
        ("resnet34", 21_328_292),
        ("resnet50", 23_705_252),
        ("resnet101", 42_697_380),
        ("resnet152", 58_341_028),
    ],
)
def test_resnet_parameter_counts_and_no_maxpool(name, count):
    with torch.device("meta"):  # shapes only, no memory or init cost
        model = create_model(name, num_classes=100)
    assert n_params(model) == count
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) for m in model.modules())
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name,block", [("resnet18", BasicBlock), ("resnet50", Bottleneck)])
def test_zero_init_residual(name, block):
    torch.manual_seed(0)
    last = "bn2" if block is BasicBlock else "bn3"
    for flag in (False, True):
        model = create_model(name, zero_init_residual=flag)
        blocks = [m for m in model.modules() if isinstance(m, block)]
        assert blocks
        for b in blocks:
            assert b.last_bn is getattr(b, last)
            assert torch.all(b.last_bn.weight == 0) == flag
            assert torch.all(b.last_bn.bias == 0)
        zeroed = {id(b.last_bn) for b in blocks} if flag else set()
        for m in model.modules():  # every other BN keeps gamma = 1
            if isinstance(m, nn.BatchNorm2d) and id(m) not in zeroed:
                assert torch.all(m.weight == 1)


def test_resnet18_spatial_path():
    model = create_model("resnet18").eval()
    shapes = []
    hooks = [
        getattr(model, f"layer{i}").register_forward_hook(lambda m, i, o: shapes.append(o.shape[-1]))
        for i in range(1, 5)
    ]
    with torch.no_grad():
        model(batch())
    for h in hooks:
        h.remove()
    assert shapes == [32, 16, 8, 4]


# ---------------------------------------------------------------------------------------------------
# The fast network
# ---------------------------------------------------------------------------------------------------


def test_fast_structure():
    model = create_model("fast", num_classes=100)
    assert isinstance(model, FastNet)
    assert model.stem.kernel_size == (2, 2) and model.stem.padding == (0, 0) and model.stem.out_channels == 24
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model.head.bias is None and model.logit_scale == pytest.approx(1 / 9)
    assert [model.group1.conv2.out_channels, model.group2.conv2.out_channels, model.group3.conv2.out_channels] == [
        64,
        256,
        256,
    ]
    assert all(m.momentum == pytest.approx(0.4) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    small = create_model("fast_small")
    assert small.model_kwargs["widths"] == [32, 64, 128]
    assert n_params(small) < n_params(model) / 4


def test_fast_depth_sets_the_convolutions_of_each_group():
    torch.manual_seed(0)
    convs = {d: create_model("fast_small", depth=d) for d in (1, 2, 3)}
    for d, model in convs.items():
        n = sum(isinstance(m, nn.Conv2d) for m in model.modules())
        assert n == 1 + 3 * d, (d, n)  # the stem and d convolutions in each of 3 groups
        assert model(batch()).shape == (2, 100)
    # depth 2 keeps the names (and so the checkpoints) of the net before depth was a choice
    assert {"group1.conv2.weight", "group1.norm2.weight"} <= set(convs[2].state_dict())
    assert "group1.conv3.weight" in convs[3].state_dict() and "group1.conv2.weight" not in convs[1].state_dict()
    # the extra convolutions start as identities on their first channels, as the others
    w = convs[3].group2.conv3.weight
    assert torch.equal(w[:, :, 1, 1].diagonal(), torch.ones(w.shape[0]))
    for bad in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match="depth"):
            create_model("fast_small", depth=bad)


def test_fast_logit_scale_scales_logits():
    torch.manual_seed(0)
    a = create_model("fast_small", logit_scale=1.0).eval()
    b = create_model("fast_small", logit_scale=0.5).eval()
    b.load_state_dict(a.state_dict())
    x = batch()
    with torch.no_grad():
        torch.testing.assert_close(b(x), 0.5 * a(x))


def test_fast_activation_choice():
    gelu, relu = create_model("fast_small"), create_model("fast_small", act="relu")
    assert relu.model_kwargs["act"] == "relu" and gelu.model_kwargs["act"] == "gelu"
    assert {type(m) for m in gelu.modules()} & {nn.GELU, nn.ReLU} == {nn.GELU}
    assert {type(m) for m in relu.modules()} & {nn.GELU, nn.ReLU} == {nn.ReLU}
    relu.load_state_dict(gelu.state_dict())  # same parameters, only the nonlinearity differs
    with pytest.raises(ValueError, match="activation"):
        create_model("fast", act="tanh")


@pytest.mark.parametrize("widths", [(64, 256), (0, 1, 2), (1.5, 2, 3)])
def test_fast_bad_widths(widths):
    with pytest.raises(ValueError, match="widths"):
        create_model("fast", widths=widths)


@pytest.mark.parametrize("name", ["fast", "fast_small"])
def test_fast_channels_last_matches(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = batch()
    with torch.no_grad():
        ref = model(x)
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        out = cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_fast_bf16_autocast_channels_last():
    torch.manual_seed(0)
    model = create_model("fast_small").to(memory_format=torch.channels_last)
    x = batch().contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = F.cross_entropy(out.float(), torch.tensor([3, 4]))
    loss.backward()
    assert out.shape == (2, 100) and torch.isfinite(out.float()).all()
    assert torch.isfinite(model.stem.weight.grad).all()


def test_fast_init_whiten_decorrelates_patches():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)  # NHWC, as CifarData keeps them
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
    model = create_model("fast_small").to(memory_format=torch.channels_last)
    eig = model.init_whiten(images, mean=mean, std=std)
    assert eig.shape == (12,) and torch.all(eig[:-1] >= eig[1:])
    w = model.stem.weight
    torch.testing.assert_close(w[12:], -w[:12])
    assert w.requires_grad
    x = (images.permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        y = F.conv2d(x, w[:12]).permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = y.T @ y / y.shape[0]  # uncentred, like the whitening itself
    torch.testing.assert_close(cov, torch.eye(12, dtype=torch.float64), atol=0.02, rtol=0)

    # float NCHW input that is already normalised gives the same stem
    other = create_model("fast_small")
    other.init_whiten(x, freeze=True)
    torch.testing.assert_close(other.stem.weight, w, rtol=1e-4, atol=1e-4)
    assert not other.stem.weight.requires_grad
    with pytest.raises(ValueError, match="mean/std"):
        other.init_whiten(x, mean=mean)
    with pytest.raises(ValueError, match="stem_width"):
        create_model("fast_small", stem_width=26).init_whiten(x)
