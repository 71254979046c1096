"""DINOv2's PCA visualization: a known foreground/background split from hand-made features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from conftest import small_vit

from dinolab.viz.pca import (
    image_features,
    minmax,
    orient_foreground_high,
    pca_maps,
    principal_components,
    save_pca_figure,
    save_pca_grid,
)


def planted_features(num_images: int = 3, dim: int = 16, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """6x6 grids whose central 2x4 block (the object) is made of 4 parts (2 patches each) + noise, the rest
    background: 4 parts span 3 dimensions, so the foreground PCA gives 3 meaningful colour channels."""
    rng = np.random.default_rng(seed)
    background, obj = rng.normal(size=dim), rng.normal(size=dim) * 4
    parts = rng.normal(size=(4, dim))
    foreground = np.zeros((6, 6), dtype=bool)
    foreground[2:4, 1:5] = True
    grids = []
    for _ in range(num_images):
        grid = background + 0.05 * rng.normal(size=(6, 6, dim))
        for k, (r, c) in enumerate(zip(*np.nonzero(foreground), strict=True)):
            grid[r, c] = obj + parts[k % 4] + 0.05 * rng.normal(size=dim)
        grids.append(grid)
    return grids, foreground


def test_known_pattern_gives_the_known_split() -> None:
    grids, foreground = planted_features()
    maps = pca_maps(grids)
    for first, fg, rgb in zip(maps.first, maps.foreground, maps.rgb, strict=True):
        np.testing.assert_array_equal(fg, foreground)  # the object is the foreground, whichever sign PCA gave
        assert first.min() >= 0 and first.max() <= 1
        assert (rgb[~foreground] == 0).all()  # background is black
        assert rgb.min() >= 0 and rgb.max() <= 1
        colours = rgb[foreground]  # row-major: parts 0, 1, 2, 3, 0, 1, 2, 3
        np.testing.assert_allclose(colours[:4], colours[4:], atol=0.1)  # a part has one colour
        distances = np.linalg.norm(colours[:4, None] - colours[None, :4], axis=-1)
        assert distances[~np.eye(4, dtype=bool)].min() > 0.5  # different parts, clearly different colours


def test_split_does_not_depend_on_the_feature_sign() -> None:
    grids, foreground = planted_features(seed=1)
    flipped = pca_maps([-g for g in grids])
    for fg in flipped.foreground:
        np.testing.assert_array_equal(fg, foreground)


def test_orientation_without_interior_patches_makes_the_minority_foreground() -> None:
    first = np.array([0.0, 0.1, 0.9, 1.0, 0.05, 0.0])
    border = np.ones(6, dtype=bool)
    np.testing.assert_array_equal(orient_foreground_high(first, border, 0.5), first)
    np.testing.assert_allclose(orient_foreground_high(1 - first, border, 0.5), first)


def test_principal_components_are_deterministic_and_ordered() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(200, 5)) * np.array([5.0, 3.0, 1.0, 0.5, 0.1])
    proj = principal_components(data, 3)
    assert proj.shape == (200, 3)
    variances = proj.var(axis=0)
    assert variances[0] > variances[1] > variances[2]
    np.testing.assert_allclose(np.abs(np.corrcoef(proj[:, 0], data[:, 0])[0, 1]), 1, atol=1e-3)
    np.testing.assert_array_equal(proj, principal_components(data, 3))
    assert minmax(np.array([2.0, 2.0])).tolist() == [0, 0]


def test_model_features_and_figures(tmp_path: Path) -> None:
    model = small_vit(num_register_tokens=2).eval()
    cls, patches = image_features(model, torch.randn(4, 1, 28, 42))
    assert cls.shape == (4, 32) and patches.shape == (4, 4, 6, 32)
    maps = pca_maps(list(patches))
    assert [m.shape for m in maps.rgb] == [(4, 6, 3)] * 4
    images = [np.zeros((28, 42, 1), np.uint8)] * 4
    assert save_pca_figure(tmp_path / "one.png", images[0], maps, 0, patch_size=7).is_file()
    assert save_pca_grid(tmp_path / "grid.png", images, maps, ["a", "b", "c", "d"]).is_file()
