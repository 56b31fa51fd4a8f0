import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cifar_resnet import augment
from cifar_resnet.augment import Augment
from cifar_resnet.data import Split
from cifar_resnet.loader import CifarLoader

pytestmark = pytest.mark.usefixtures("one_thread")


def _split(n=50, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % 10
    return Split(images=images, labels=labels, coarse=None)


@pytest.mark.parametrize("mode, torch_mode", [("reflect", "reflect"), ("zeros", "constant")])
def test_random_crop_matches_pad_then_crop(mode, torch_mode):
    """The row-gather crop equals padding each image (reflect or zeros) and cutting the 32x32 window at the
    offsets it drew; recover the offsets by replaying the generator."""
    x = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)
    g = torch.Generator().manual_seed(3)
    out = augment.random_crop(x, 4, g, mode=mode)
    assert out.shape == x.shape and out.dtype == x.dtype
    g = torch.Generator().manual_seed(3)
    dy = torch.randint(0, 9, (16,), generator=g)
    dx = torch.randint(0, 9, (16,), generator=g)
    padded = F.pad(x.permute(0, 3, 1, 2).float(), (4, 4, 4, 4), mode=torch_mode).permute(0, 2, 3, 1)
    for i in range(16):
        ref = padded[i, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32].to(torch.uint8)
        assert torch.equal(out[i], ref)
    assert not torch.equal(out, x)  # something moved


def test_random_crop_zeros_mode_pads_with_zero():
    x = torch.full((64, 32, 32, 3), 7, dtype=torch.uint8)
    out = augment.random_crop(x, 4, torch.Generator().manual_seed(0), mode="zeros")
    assert set(out.unique().tolist()) == {0, 7}


def test_flip_and_alternating_flip():
    x = torch.arange(2 * 32 * 32 * 3).reshape(2, 32, 32, 3)
    out = augment.flip(x, torch.tensor([True, False]))
    assert torch.equal(out[0], x[0].flip(1)) and torch.equal(out[1], x[1])
    base = torch.tensor([True, False, True])
    assert torch.equal(augment.alternating_flip_mask(base, 0), base)
    assert torch.equal(augment.alternating_flip_mask(base, 1), ~base)


def test_cutout_square_size_and_fill():
    x = torch.full((200, 32, 32, 3), 9, dtype=torch.uint8)
    fill = torch.tensor([1, 2, 3], dtype=torch.uint8)
    out = augment.cutout(x, 8, torch.Generator().manual_seed(0), fill)
    cut = (out != 9).all(-1)  # (n, h, w) pixels that were filled
    assert torch.equal(out[cut], fill.expand(int(cut.sum()), 3))
    sizes = cut.flatten(1).sum(1)
    assert sizes.max() == 64 and sizes.min() > 0  # a whole 8x8 square when inside, partial at edges


def test_eval_loader_is_plain_normalised_images_in_order():
    s = _split(23)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    loader = CifarLoader(s, 10, mean=mean, std=std)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [10, 10, 3]
    x = torch.cat([b[0] for b in batches])
    ref = (
        torch.from_numpy(s.images).permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)
    ) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.from_numpy(s.labels))


def test_train_loader_shuffles_per_epoch_and_is_a_function_of_seed_and_epoch():
    s = _split(40)
    kw = {"mean": (0.5,) * 3, "std": (0.25,) * 3, "train": True, "seed": 7}
    a = CifarLoader(s, 8, **kw)
    b = CifarLoader(s, 8, **kw)
    ep0 = [(x.clone(), y.clone()) for x, y in a]
    ep1 = [(x.clone(), y.clone()) for x, y in a]
    assert len(ep0) == 5  # drop_last in training; 40 / 8
    assert not torch.equal(torch.cat([y for _, y in ep0]), torch.cat([y for _, y in ep1]))
    # each epoch is a permutation of all labels
    assert sorted(torch.cat([y for _, y in ep0]).tolist()) == sorted(s.labels.tolist())
    # a fresh loader set to epoch 1 reproduces epoch 1 exactly (what exact resume relies on)
    b.set_epoch(1)
    again = [(x.clone(), y.clone()) for x, y in b]
    assert len(again) == len(ep1)
    for (xa, ya), (xb, yb) in zip(ep1, again):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_train_loader_never_copies_the_set_as_float():
    s = _split(64)
    loader = CifarLoader(s, 16, mean=(0.5,) * 3, std=(0.25,) * 3, train=True, aug=Augment(cutout=8))
    assert loader.images.dtype == torch.uint8 and loader.images.shape == (64, 32, 32, 3)
    x, y = next(iter(loader))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_bad_augment_settings_raise():
    with pytest.raises(ValueError, match="flip"):
        Augment(flip="sideways")
    with pytest.raises(ValueError):
        CifarLoader(_split(4), 0, mean=(0.5,) * 3, std=(0.25,) * 3)
