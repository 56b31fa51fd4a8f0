"""MuonSGD: Muon for the hidden filters, Nesterov SGD (exactly torch's) for the rest."""

import pytest
import torch
from torch import nn

from cifar_resnet.models import create_model
from cifar_resnet.optim import MuonSGD, muon_parameters, zeropower

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("shape", [(16, 72), (72, 16), (8, 8)])
def test_zeropower_is_nearly_orthogonal(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    o = zeropower(g)
    assert o.shape == g.shape
    s = torch.linalg.svdvals(o)
    # the quintic converges to singular values in roughly [0.7, 1.2], not exactly 1 (by design)
    assert s.min() > 0.5 and s.max() < 1.3, s
    # and it keeps the singular vectors: o is close to U V^T of g
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    assert torch.nn.functional.cosine_similarity(o.flatten(), (u @ vh).flatten(), dim=0) > 0.95


def test_zeropower_rejects_non_matrices():
    with pytest.raises(ValueError, match="matrix"):
        zeropower(torch.randn(2, 3, 4))


def test_muon_parameters_are_the_hidden_filters():
    model = create_model("fast", num_classes=10, widths=[8, 16, 16], stem_width=8)
    muon, other = muon_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in muon) == sorted(f"group{g}.conv{c}.weight" for g in (1, 2, 3) for c in (1, 2))
    assert "stem.weight" in {names[id(p)] for p in other} and "head.weight" in {names[id(p)] for p in other}
    assert len(muon) + len(other) == len(list(model.parameters()))


def test_sgd_group_matches_torch_nesterov_and_muon_keeps_the_filter_norm():
    torch.manual_seed(0)
    model = create_model("fast", num_classes=10, widths=[8, 16, 16], stem_width=8)
    reference = create_model("fast", num_classes=10, widths=[8, 16, 16], stem_width=8)
    reference.load_state_dict(model.state_dict())
    opt = MuonSGD(model, lr=0.1, momentum=0.9, weight_decay=5e-4, muon_lr=0.05, muon_momentum=0.6)
    ref_muon, ref_other = muon_parameters(reference)
    ref_opt = torch.optim.SGD(ref_other, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x, y = torch.randn(12, 3, 32, 32), torch.arange(12) % 10
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    muon, other = muon_parameters(model)
    for _ in range(3):
        for m, o in ((model, opt), (reference, ref_opt)):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
        with torch.no_grad():  # the reference's filters follow the model's, so the gradients agree
            for p, q in zip(muon, ref_muon):
                q.copy_(p)
    for p, q in zip(other, ref_other):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    named = dict(model.named_parameters())
    for p in muon:
        name = next(n for n, q in named.items() if q is p)
        assert not torch.equal(p, before[name]), name
        # projected to norm sqrt(out) before each step; one step of relative size ~lr moves it little
        assert p.norm().item() == pytest.approx(p.shape[0] ** 0.5, rel=0.1), name


def test_muon_needs_hidden_filters():
    with pytest.raises(ValueError, match="hidden filter"):
        MuonSGD(nn.Linear(3, 2), lr=0.1, momentum=0.9, weight_decay=0, muon_lr=0.1, muon_momentum=0.6)
