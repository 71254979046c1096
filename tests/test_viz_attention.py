"""[CLS] attention maps and the DINO paper's attention-mass masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_vit
from PIL import Image

from dinolab.viz.attention import attention_maps, cls_attention, mass_mask, save_attention_figure, upsample


@pytest.mark.parametrize("registers", [0, 3])
def test_cls_attention_is_a_distribution_over_patches(registers: int) -> None:
    model = small_vit(num_register_tokens=registers).eval()
    x = torch.randn(2, 1, 35, 21)  # not the 28 px training size: position embeddings are interpolated
    attn = cls_attention(model, x)
    assert attn.shape == (2, 2, 5, 3) and attn.dtype == np.float32  # (B, heads, 35/7, 21/7): registers dropped
    assert (attn >= 0).all()
    np.testing.assert_allclose(attn.sum(axis=(2, 3)), 1, rtol=1e-5)
    np.testing.assert_array_equal(attn, cls_attention(model, x))  # deterministic


def test_mass_mask_keeps_the_fewest_patches_holding_the_mass() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((50, 4, 6)) ** 3
    for fraction in (0.1, 0.6, 0.9, 1.0):
        masks = mass_mask(maps, fraction)
        assert masks.shape == maps.shape and masks.dtype == bool
        for grid, mask in zip(maps, masks, strict=True):
            share = grid / grid.sum()
            assert share[mask].sum() >= fraction - 1e-9  # keeps at least the requested mass
            assert share[mask].min() >= share[~mask].max(initial=0)  # the highest-attention patches
            assert share[mask].sum() - share[mask].min() < fraction  # one patch fewer would not be enough


def test_mass_mask_known_example() -> None:
    grid = np.array([[0.5, 0.1], [0.3, 0.1]])
    np.testing.assert_array_equal(mass_mask(grid, 0.6), [[True, False], [True, False]])  # 0.5 + 0.3 >= 0.6
    np.testing.assert_array_equal(mass_mask(grid, 0.5), [[True, False], [False, False]])
    with pytest.raises(ValueError, match=r"mass fraction must be in \(0, 1\]"):
        mass_mask(grid, 0)


def test_attention_maps_and_figure(tmp_path: Path) -> None:
    model = small_vit().eval()
    maps = attention_maps(model, torch.randn(3, 1, 28, 28), fraction=0.6)
    assert len(maps) == 3
    m = maps[0]
    assert m.heads.shape == (2, 4, 4) and m.mean.shape == (4, 4)
    assert m.head_masks.shape == (2, 4, 4) and m.mean_mask.shape == (4, 4)
    np.testing.assert_allclose(m.mean, m.heads.mean(axis=0))
    np.testing.assert_array_equal(m.mean_mask, mass_mask(m.mean, 0.6))
    image = np.random.default_rng(0).integers(0, 256, (28, 28, 1), dtype=np.uint8)
    path = save_attention_figure(tmp_path / "attention.png", image, m, patch_size=7)
    with Image.open(path) as png:
        assert png.size == (4 * 200, 2 * 200)  # 2 rows x (image, 2 heads, mean), 200 px panels


def test_upsample_repeats_each_patch() -> None:
    grid = np.arange(6).reshape(2, 3)
    up = upsample(grid, 4)
    assert up.shape == (8, 12)
    assert (up[:4, 4:8] == 1).all() and (up[4:, 8:] == 5).all()
