"""Batched multi-crop augmentation: shapes, determinism, and each helper on inputs with known answers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from dinolab.data import transforms as T
from dinolab.data.transforms import CropSpec, MultiCropAugmentation, dino_crop_specs


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def draw_for(n: int, seed: int = 0) -> T.Draw:
    """Random draws for a batch of n images, all of them held here."""
    return T.Draw(gen(seed), T.Rows.all(n))


def uint8_images(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, h, w), generator=gen(seed), dtype=torch.uint8)


def constant_images(b: int, c: int, size: int, value: int) -> torch.Tensor:
    return torch.full((b, c, size, size), value, dtype=torch.uint8)


def test_dino_crop_specs() -> None:
    specs = dino_crop_specs(28, (0.4, 1.0), 3, 14, (0.1, 0.4))
    assert len(specs) == 5
    assert [s.size for s in specs] == [28, 28, 14, 14, 14]
    assert (specs[0].blur_prob, specs[0].solarize_prob) == (1.0, 0.0)
    assert (specs[1].blur_prob, specs[1].solarize_prob) == (0.1, 0.2)
    assert all(s.blur_prob == 0.5 and s.scale == (0.1, 0.4) and s.solarize_prob == 0 for s in specs[2:])
    assert all(s.scale == (0.4, 1.0) for s in specs[:2])


@pytest.mark.parametrize("channels", [1, 3])
def test_multicrop_output_count_shapes_dtype(channels: int) -> None:
    aug = MultiCropAugmentation(
        dino_crop_specs(28, (0.4, 1.0), 4, 14, (0.1, 0.4)), mean=(0.5,) * channels, std=(0.25,) * channels
    )
    images = uint8_images(5, channels, 32, 36)
    before = images.clone()
    crops = aug(images, gen())
    assert len(crops) == 6
    assert [tuple(c.shape) for c in crops] == [(5, channels, 28, 28)] * 2 + [(5, channels, 14, 14)] * 4
    assert all(c.dtype == torch.float32 for c in crops)
    assert all(torch.isfinite(c).all() for c in crops)
    # normalized values of [0, 1] pixels lie in [(0 - .5) / .25, (1 - .5) / .25]
    assert all(c.min() >= -2 - 1e-4 and c.max() <= 2 + 1e-4 for c in crops)
    assert torch.equal(images, before)  # the uint8 batch is not modified


@pytest.mark.parametrize("channels", [1, 3])
def test_a_slice_of_the_batch_gets_the_crops_of_its_rows(channels: int) -> None:
    """What makes a multi-process run see one process's crops: each rank augments only its rows."""
    aug = MultiCropAugmentation(dino_crop_specs(28, (0.4, 1.0), 3, 14, (0.1, 0.4)), (0.5,) * channels,
                                (0.25,) * channels)
    images = uint8_images(8, channels, 32, 32)
    whole = aug(images, gen(5))
    for rows in (slice(0, 4), slice(4, 8), slice(2, 5)):
        part = aug(images[rows], gen(5), T.Rows(8, rows))
        for w, p in zip(whole, part, strict=True):
            torch.testing.assert_close(p, w[rows], rtol=0, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_multicrop_is_deterministic_for_a_seed(channels: int) -> None:
    aug = MultiCropAugmentation(dino_crop_specs(28, (0.4, 1.0), 2, 14, (0.1, 0.4)), (0.5,) * channels,
                                (0.25,) * channels)
    images = uint8_images(4, channels, 32, 32)
    a, b, c = aug(images, gen(7)), aug(images, gen(7)), aug(images, gen(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(not torch.equal(x, z) for x, z in zip(a, c, strict=True))


def test_multicrop_views_differ_from_each_other() -> None:
    aug = MultiCropAugmentation([CropSpec(16, (0.2, 1.0), 0.5)] * 3, (0.5,), (0.5,))
    crops = aug(uint8_images(4, 1, 32, 32), gen())
    assert not torch.equal(crops[0], crops[1])
    assert not torch.equal(crops[1], crops[2])


def test_constant_image_survives_crop_flip_blur_and_normalize() -> None:
    """Without color jitter every geometric op and the blur keep a constant image constant."""
    aug = MultiCropAugmentation([CropSpec(16, (0.1, 1.0), blur_prob=1.0)], mean=(0.2,), std=(0.5,),
                                color_jitter=False)
    (crop,) = aug(constant_images(3, 1, 30, 77), gen())
    torch.testing.assert_close(crop, torch.full_like(crop, (77 / 255 - 0.2) / 0.5))


@pytest.mark.parametrize(("value", "expected"), [(200, 55), (250, 5), (50, 50), (100, 100)])
def test_solarization_inverts_pixels_above_128(value: int, expected: int) -> None:
    aug = MultiCropAugmentation([CropSpec(16, (0.3, 1.0), blur_prob=0.0, solarize_prob=1.0)], mean=(0.0,) * 3,
                                std=(1.0,) * 3, color_jitter=False)
    (crop,) = aug(constant_images(2, 3, 24, value), gen())
    torch.testing.assert_close(crop, torch.full_like(crop, expected / 255))


def test_solarization_probability_zero_never_inverts() -> None:
    aug = MultiCropAugmentation([CropSpec(16, (0.3, 1.0), blur_prob=0.0, solarize_prob=0.0)], (0.0,), (1.0,),
                                color_jitter=False)
    (crop,) = aug(constant_images(8, 1, 24, 200), gen())
    torch.testing.assert_close(crop, torch.full_like(crop, 200 / 255))


# ---------------------------------------------------------------- hue, grayscale, color jitter


def test_adjust_hue_zero_shift_is_identity() -> None:
    x = torch.rand(4, 3, 9, 11, generator=gen())
    torch.testing.assert_close(T.adjust_hue(x, torch.zeros(4)), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("shift", "expected"),
    [(1 / 3, (0.0, 1.0, 0.0)), (2 / 3, (0.0, 0.0, 1.0)), (-1 / 3, (0.0, 0.0, 1.0)), (1 / 6, (1.0, 1.0, 0.0))],
)
def test_adjust_hue_rotates_pure_red(shift: float, expected: tuple[float, float, float]) -> None:
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    out = T.adjust_hue(red, torch.tensor([shift]))
    torch.testing.assert_close(out, torch.tensor(expected).view(1, 3, 1, 1).expand(1, 3, 2, 2), atol=1e-5, rtol=0)


def test_adjust_hue_keeps_grays_and_value() -> None:
    gray = torch.rand(3, 1, 5, 5, generator=gen()).expand(3, 3, 5, 5)
    torch.testing.assert_close(T.adjust_hue(gray, torch.tensor([0.1, -0.3, 0.45])), gray, atol=1e-6, rtol=0)
    x = torch.rand(3, 3, 5, 5, generator=gen(1))
    out = T.adjust_hue(x, torch.tensor([0.1, -0.2, 0.3]))
    torch.testing.assert_close(out.amax(1), x.amax(1), atol=1e-5, rtol=0)  # HSV value is max(R, G, B)


def test_adjust_hue_matches_torchvision_per_sample() -> None:
    x = torch.rand(4, 3, 6, 7, generator=gen(2))
    shifts = torch.tensor([-0.1, 0.03, 0.1, 0.25])
    out = T.adjust_hue(x, shifts)
    for i, s in enumerate(shifts.tolist()):
        torch.testing.assert_close(out[i], TF.adjust_hue(x[i], s), atol=1e-5, rtol=0)


def test_grayscale() -> None:
    x = torch.rand(2, 3, 4, 4, generator=gen())
    expected = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    torch.testing.assert_close(T.grayscale(x), expected.unsqueeze(1))
    one = torch.rand(2, 1, 4, 4)
    assert T.grayscale(one) is one


def test_random_grayscale_extremes() -> None:
    x = torch.rand(6, 3, 4, 4, generator=gen())
    all_gray = T.random_grayscale(x, draw_for(len(x)), p=1.0)
    assert torch.equal(all_gray[:, 0], all_gray[:, 1]) and torch.equal(all_gray[:, 1], all_gray[:, 2])
    assert torch.equal(T.random_grayscale(x, draw_for(len(x)), p=0.0), x)


@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_with_p_zero_is_identity_and_p_one_stays_in_range(channels: int) -> None:
    x = torch.rand(5, channels, 6, 6, generator=gen())
    torch.testing.assert_close(T.color_jitter(x.clone(), draw_for(len(x)), p=0.0), x, atol=1e-5, rtol=0)
    y = T.color_jitter(x.clone(), draw_for(len(x)), p=1.0)
    assert y.shape == x.shape
    assert y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(y, x)


def test_color_jitter_brightness_only() -> None:
    x = torch.full((64, 1, 2, 2), 0.5)
    y = T.color_jitter(x, draw_for(len(x)), p=1.0, brightness=0.4, contrast=0.0)
    factors = y[:, 0, 0, 0] / 0.5
    assert factors.min() >= 0.6 - 1e-6 and factors.max() <= 1.4 + 1e-6
    assert factors.std() > 0.1  # per-sample factors


# ---------------------------------------------------------------- crops


@pytest.mark.parametrize(("h", "w"), [(28, 28), (48, 64), (100, 20), (15, 90)])
@pytest.mark.parametrize("scale", [(0.05, 0.4), (0.4, 1.0), (0.08, 1.0)])
def test_sample_crop_boxes_inside_image_and_in_scale(h: int, w: int, scale: tuple[float, float]) -> None:
    boxes = T.sample_crop_boxes(draw_for(500), h, w, scale)
    assert boxes.shape == (500, 4)
    x1, y1, x2, y2 = boxes.unbind(1)
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= w).all() and (y2 <= h).all()
    cw, ch = x2 - x1, y2 - y1
    assert (cw >= 1).all() and (ch >= 1).all()
    assert torch.equal(boxes, boxes.round())  # whole pixels
    area = cw * ch
    # widths and heights are rounded to whole pixels: allow half a pixel on each side
    slack = 0.5 * (cw + ch) + 0.25
    fallback = (cw == min(w, round(h * 4 / 3))) & (ch == min(h, round(w * 4 / 3)))  # torchvision's fallback crop
    in_range = (area >= scale[0] * h * w - slack) & (area <= scale[1] * h * w + slack)
    assert (in_range | fallback).all()
    ratio = cw / ch
    assert ((ratio >= 3 / 4 * 0.8) & (ratio <= 4 / 3 * 1.25) | fallback).all()
    # sampled, not constant (unless no crop of this scale fits the aspect range and all fall back)
    if (~fallback).sum() > 50:
        assert len(set(area[~fallback].tolist())) > 5


def test_sample_crop_boxes_deterministic() -> None:
    a = T.sample_crop_boxes(draw_for(10, 3), 28, 28, (0.1, 0.5))
    b = T.sample_crop_boxes(draw_for(10, 3), 28, 28, (0.1, 0.5))
    c = T.sample_crop_boxes(draw_for(10, 4), 28, 28, (0.1, 0.5))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sample_crop_boxes_area_statistics() -> None:
    """Areas follow U(scale) * area, as in RandomResizedCrop: mean near the midpoint."""
    boxes = T.sample_crop_boxes(draw_for(4000), 200, 200, (0.1, 0.5))
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) / (200 * 200)
    assert area.mean().item() == pytest.approx(0.3, abs=0.01)


def full_boxes(draw: T.Draw, h: int, w: int, *_args, **_kwargs) -> torch.Tensor:
    return torch.tensor([[0.0, 0.0, float(w), float(h)]]).expand(draw.rows.total, 4)


def test_random_resized_crop_full_box_is_identity_and_halving_is_area_average(monkeypatch) -> None:
    monkeypatch.setattr(T, "sample_crop_boxes", full_boxes)
    x = torch.rand(3, 2, 16, 16, generator=gen())
    torch.testing.assert_close(T.random_resized_crop(x, 16, (1.0, 1.0), draw_for(len(x))), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(T.random_resized_crop(x, 8, (1.0, 1.0), draw_for(len(x))), F.avg_pool2d(x, 2), atol=1e-6,
                               rtol=0)


def test_random_resized_crop_of_a_ramp_stays_monotone() -> None:
    ramp = torch.arange(40.0).view(1, 1, 1, 40).expand(4, 1, 30, 40).contiguous()
    out = T.random_resized_crop(ramp, 12, (0.2, 1.0), draw_for(len(ramp)))
    assert out.shape == (4, 1, 12, 12)
    assert (out.diff(dim=-1) > 0).all()  # no flip inside the crop op
    assert torch.allclose(out, out[:, :, :1].expand_as(out))  # rows identical
    assert out.min() >= 0 and out.max() <= 39


# ---------------------------------------------------------------- blur


def test_gaussian_blur_p_zero_is_identity() -> None:
    x = torch.rand(3, 3, 16, 16, generator=gen())
    assert torch.equal(T.gaussian_blur(x, draw_for(len(x)), p=0.0, sigma=(0.1, 2.0)), x)


def test_gaussian_blur_preserves_a_constant_image() -> None:
    x = torch.full((4, 3, 16, 20), 0.37)
    y = T.gaussian_blur(x, draw_for(len(x)), p=1.0, sigma=(0.5, 2.0))
    torch.testing.assert_close(y, x)
    assert y.mean().item() == pytest.approx(0.37, abs=1e-6)


@pytest.mark.parametrize("sigma", [0.6, 1.0, 1.7])
def test_gaussian_blur_matches_torchvision_for_a_fixed_sigma(sigma: float) -> None:
    x = torch.rand(2, 3, 20, 18, generator=gen())
    y = T.gaussian_blur(x, draw_for(len(x)), p=1.0, sigma=(sigma, sigma))
    radius = min(math.ceil(3 * sigma), (18 - 1) // 2)
    expected = TF.gaussian_blur(x, kernel_size=[2 * radius + 1] * 2, sigma=[sigma, sigma])
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)


def test_gaussian_blur_smooths_and_conserves_mass() -> None:
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 10] = 1.0
    y = T.gaussian_blur(x, draw_for(len(x)), p=1.0, sigma=(1.0, 1.0))
    assert y.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert y[0, 0, 10, 10] < 0.5
    torch.testing.assert_close(y[0, 0], y[0, 0].T)  # isotropic
    noise = torch.rand(2, 1, 32, 32, generator=gen())
    assert T.gaussian_blur(noise, draw_for(len(noise)), p=1.0, sigma=(1.0, 2.0)).var() < noise.var() / 2


def test_gaussian_blur_p_half_blurs_some_samples_only() -> None:
    x = torch.rand(64, 1, 16, 16, generator=gen())
    y = T.gaussian_blur(x, draw_for(len(x)), p=0.5, sigma=(1.0, 2.0))
    same = sum(torch.allclose(y[i], x[i], atol=1e-6) for i in range(64))
    assert 10 < same < 54


def test_normalize() -> None:
    x = torch.rand(2, 3, 4, 4)
    mean = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(T.normalize(x, mean, std) * std + mean, x)


def test_the_loader_applies_the_flip_and_solarization_switches() -> None:
    """data.hflip / data.solarize reach the augmentation `dinolab train` builds (off: no mirror, no solarize)."""
    from dinolab.config import DataConfig
    from dinolab.data.loader import build_augmentation

    off = build_augmentation(DataConfig(hflip=False, solarize=False))
    assert not off.hflip and all(spec.solarize_prob == 0 for spec in off.specs)
    default = build_augmentation(DataConfig())
    assert default.hflip and default.specs[1].solarize_prob == 0.2
    ramp = torch.arange(32, dtype=torch.uint8).repeat(4, 1, 32, 1) * 8  # brightness rises left to right
    aug = MultiCropAugmentation([T.CropSpec(32, (1.0, 1.0), blur_prob=0.0)], (0.0,), (1.0,), color_jitter=False,
                                blur_sigma=(0.1, 0.1), hflip=False)
    (crop,) = aug(ramp, gen())
    assert (crop[..., 1:] >= crop[..., :-1] - 1e-4).all()  # never mirrored
