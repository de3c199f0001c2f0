"""falign.data.transforms: batch crops and flips checked against positions written into pixels."""

from __future__ import annotations

import torch

from falign.data import ImageTransform
from falign.data.cifar import CIFAR10_MEAN, CIFAR10_STD, cifar_transforms


def _position_images(n: int, size: int = 32) -> torch.Tensor:
    """(n, 3, size, size) uint8: channel 0 holds the row, channel 1 the column, 2 the sample."""
    rows = torch.arange(size, dtype=torch.uint8).view(size, 1).expand(size, size)
    cols = rows.t()
    x = torch.empty(n, 3, size, size, dtype=torch.uint8)
    x[:, 0], x[:, 1] = rows, cols
    x[:, 2] = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1)
    return x


def _windows(out: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read back (top, left, mirrored) from a crop of `_position_images`, asserting it is one."""
    rows, cols = out[:, 0].long(), out[:, 1].long()  # (N, S, S)
    top, ar = rows[:, 0, 0], torch.arange(size)
    assert torch.equal(rows, (top[:, None] + ar).unsqueeze(2).expand_as(rows))
    mirrored = cols[:, 0, 0] > cols[:, 0, -1]
    left = torch.where(mirrored, cols[:, 0, -1], cols[:, 0, 0])
    expect = torch.where(mirrored[:, None], left[:, None] + ar.flip(0), left[:, None] + ar)
    assert torch.equal(cols, expect.unsqueeze(1).expand_as(cols))
    return top, left, mirrored


def test_random_crop_lands_inside_and_reaches_every_offset():
    x = _position_images(2000)
    out = ImageTransform(crop=24, random_crop=True, flip=True, scale=1.0)(
        x, torch.Generator().manual_seed(0)
    )
    assert out.shape == (2000, 3, 24, 24) and out.dtype == torch.float32
    assert torch.equal(out[:, 2].long(), x[:, 2, :24, :24].long())  # each sample stays itself
    top, left, mirrored = _windows(out, 24)
    assert set(top.tolist()) == set(range(9)) and set(left.tolist()) == set(range(9))
    assert 0.45 < mirrored.float().mean() < 0.55


def test_flip_is_an_exact_mirror_or_identity():
    x = torch.randint(0, 256, (400, 3, 8, 8), dtype=torch.uint8)
    out = ImageTransform(flip=True, scale=1.0)(x, torch.Generator().manual_seed(1))
    same = (out == x.float()).flatten(1).all(1)
    mirror = (out == x.flip(-1).float()).flatten(1).all(1)
    assert bool((same | mirror).all())
    assert 150 < int(mirror.sum()) < 250


def test_eval_centre_crop_is_exact_and_normalised_per_channel():
    _, eval_t, shape = cifar_transforms(24, None, True)
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
    expect = (x[:, :, 4:28, 4:28].double() / 255 - mean.double()) / std.double()
    out = eval_t(x, None)
    assert shape == (3, 24, 24) and out.shape == (5, 3, 24, 24)
    assert torch.allclose(out.double(), expect, atol=1e-5)
    assert torch.equal(eval_t(x, torch.Generator().manual_seed(5)), out)  # deterministic


def test_cifar_train_transform_is_a_window_of_the_normalised_image():
    train_t, _, _ = cifar_transforms(24, None, True)
    x = _position_images(500)
    out = train_t(x, torch.Generator().manual_seed(2))
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    pixels = ((out * std + mean) * 255).round()
    assert torch.allclose((out * std + mean) * 255, pixels, atol=1e-3)
    top, left, _ = _windows(pixels, 24)
    assert int(top.max()) <= 8 and int(left.max()) <= 8


def test_padded_random_crop_shifts_by_at_most_the_padding():
    train_t, eval_t, shape = cifar_transforms(None, None, True)  # BioTorch: pad 4, crop 32
    assert shape == (3, 32, 32)
    x = _position_images(1000) + 1  # so padding (0) differs from every pixel
    t = ImageTransform(pad=4, crop=32, random_crop=True, flip=True, scale=1.0)
    out = t(x, torch.Generator().manual_seed(3)).long()
    shifts = set()
    for i in range(0, 1000, 37):
        inside = out[i, 0] > 0  # (32, 32) pixels that came from the image
        rows, cols = inside.any(1).nonzero().flatten(), inside.any(0).nonzero().flatten()
        r0 = int(out[i, 0][rows[0], cols[0]]) - 1 - int(rows[0])  # image row - output row
        shifts.add(r0)
        assert torch.equal(inside, inside.any(1)[:, None] & inside.any(0)[None, :])  # a rectangle
        assert len(rows) >= 28 and len(cols) >= 28  # at most 4 pixels lost per side
    assert shifts <= set(range(-4, 5)) and len(shifts) > 4
    # the real transform pads with black before normalising
    z = train_t(torch.zeros(64, 3, 32, 32, dtype=torch.uint8), torch.Generator().manual_seed(0))
    black = (-torch.tensor(CIFAR10_MEAN) / torch.tensor(CIFAR10_STD)).view(1, 3, 1, 1)
    assert torch.allclose(z, black.expand_as(z), atol=1e-6)
    assert eval_t(x, None).shape == (1000, 3, 32, 32)


def test_same_generator_seed_gives_the_same_batch():
    train_t, _, _ = cifar_transforms(24, None, True)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    a = train_t(x, torch.Generator().manual_seed(11))
    b = train_t(x, torch.Generator().manual_seed(11))
    c = train_t(x, torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(0)
    assert train_t(x, None).shape == a.shape  # the default generator works too


def test_augment_false_trains_on_the_eval_transform():
    train_t, eval_t, _ = cifar_transforms(24, None, False)
    assert train_t is eval_t
