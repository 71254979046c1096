"""iBOT / BEiT blockwise masks: the fraction of masked images, the per-image ratio range (stratified over the
batch as in DINOv2), block shapes, determinism, bad arguments, and masks travelling with the batches."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES

from dinolab import config as config_lib
from dinolab.config import MaskConfig
from dinolab.data.loader import Batch, MultiCropBatches, build_augmentation, build_dataset, build_masking
from dinolab.data.masking import BlockMasking


def masked_counts(masking: BlockMasking, batch: int, n_batches: int, seed: int = 0) -> list[torch.Tensor]:
    """Per batch, the number of masked patches of each image."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        masks = masking(batch, g)
        assert masks.shape == (batch, masking.grid**2) and masks.dtype == torch.bool
        out.append(masks.sum(dim=1))
    return out


@pytest.mark.parametrize(("probability", "batch"), [(0.5, 16), (0.25, 8), (0.3, 10), (1.0, 6), (0.0, 8)])
def test_the_fraction_of_masked_images_is_the_probability(probability: float, batch: int) -> None:
    """Exactly round(probability * batch) images of every batch carry a (non-empty) mask, the others none;
    which images are masked changes from batch to batch."""
    masking = BlockMasking(grid=14, ratio=(0.1, 0.5), probability=probability)
    counts = masked_counts(masking, batch, n_batches=40)
    expected = round(probability * batch)
    assert all(int((c > 0).sum()) == expected for c in counts)
    total_fraction = sum(int((c > 0).sum()) for c in counts) / (batch * len(counts))
    assert total_fraction == pytest.approx(expected / batch)
    if 0 < expected < batch:
        patterns = {tuple((c > 0).tolist()) for c in counts}
        assert len(patterns) > 5  # the masked images are shuffled, not always the first ones
        # each position in the batch is masked about `probability` of the time
        per_position = torch.stack([(c > 0).float() for c in counts]).mean(0)
        assert per_position.min() > 0 and per_position.max() < 1


@pytest.mark.parametrize(("grid", "ratio"), [(14, (0.1, 0.5)), (4, (0.1, 0.5)), (6, (0.2, 0.4)), (16, (0.3, 0.3))])
def test_masked_ratios_stay_in_range(grid: int, ratio: tuple[float, float]) -> None:
    """Every masked image gets int(r * N) patches for an r drawn in [lo, hi], never more than hi * N.

    Block masks can undershoot their target (a block that would overshoot or fit nowhere is dropped, as in
    BEiT), so the lower end is checked loosely: almost every image reaches int(lo * N), all mask >= 1 patch,
    and the mean ratio is close to the middle of the range (int() rounds each target down, by < 1 patch)."""
    lo, hi = ratio
    n = grid * grid
    masking = BlockMasking(grid, ratio, probability=0.5)
    counts = torch.cat([c[c > 0] for c in masked_counts(masking, 16, n_batches=60)])
    assert len(counts) == 60 * 8
    assert counts.max().item() <= math.floor(hi * n)  # never more than hi * N
    assert counts.min().item() >= 1
    reaching_lo = (counts >= math.floor(lo * n)).float().mean().item()
    assert reaching_lo > 0.98
    mean_ratio = counts.float().mean().item() / n
    middle = (lo + hi) / 2
    assert middle - 1 / n - 0.02 <= mean_ratio <= middle + 0.01


def test_ratios_are_stratified_over_the_batch() -> None:
    """As in DINOv2, the k masked images of a batch draw their ratios from the k equal slices of [lo, hi],
    so every batch covers the whole range: the i-th smallest count is at most the top of slice i, and the
    largest mask of each batch comes from the top slice."""
    grid, lo, hi, k = 14, 0.1, 0.5, 8
    n = grid * grid
    bounds = torch.linspace(lo, hi, k + 1).tolist()
    for counts in masked_counts(BlockMasking(grid, (lo, hi), 0.5), 16, n_batches=30, seed=3):
        ordered = sorted(counts[counts > 0].tolist())
        assert len(ordered) == k
        for i, c in enumerate(ordered):
            assert c <= bounds[i + 1] * n
        assert ordered[-1] >= 0.9 * math.floor(bounds[-2] * n)  # 0.9: room for a rare block-mask undershoot
        assert ordered[0] <= bounds[1] * n


def test_blocks_are_rectangles_inside_the_grid() -> None:
    """Each block added is one axis-aligned rectangle (shorter than the grid on both sides) that adds at most
    the budget; over many draws there are tall and wide ones (aspect ratio range 0.3 .. 1/0.3)."""
    masking = BlockMasking(grid=10, ratio=(0.1, 0.5))
    g = torch.Generator().manual_seed(0)
    shapes = set()
    for budget in (4, 9, 16, 30) * 10:
        mask = torch.zeros(10, 10, dtype=torch.bool)
        added = masking._add_block(mask, budget, g)
        assert added == int(mask.sum()) and 0 < added <= budget
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert h * w == added  # the bounding box is full: a rectangle
        assert h < 10 and w < 10
        shapes.add((h, w))
    assert any(h > w for h, w in shapes) and any(w > h for h, w in shapes)


def test_a_block_mask_never_exceeds_its_target_and_is_blocky() -> None:
    masking = BlockMasking(grid=14)
    g = torch.Generator().manual_seed(1)
    for target in (1, 5, 20, 50, 97):
        mask = masking.block_mask(target, g)
        assert mask.shape == (14, 14)
        assert 0 < mask.sum() <= target
    # blocks, not scattered patches: most masked patches have a masked 4-neighbour
    mask = masking.block_mask(60, g)
    padded = torch.nn.functional.pad(mask.float()[None, None], (1, 1, 1, 1))[0, 0]
    neighbours = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    assert (neighbours[mask] > 0).float().mean() > 0.9


def test_masks_are_determined_by_the_generator() -> None:
    masking = BlockMasking(grid=8, ratio=(0.1, 0.5), probability=0.5)
    a = masking(12, torch.Generator().manual_seed(7))
    b = masking(12, torch.Generator().manual_seed(7))
    c = masking(12, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("ratio", [(0.1, 1.0), (-0.1, 0.5), (0.6, 0.5), (0.2, 1.5)])
def test_bad_ratio_range_is_an_error(ratio: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="ratio"):
        BlockMasking(grid=14, ratio=ratio)


@pytest.mark.parametrize("probability", [-0.1, 1.01, 2.0])
def test_bad_probability_is_an_error(probability: float) -> None:
    with pytest.raises(ValueError, match="probability"):
        BlockMasking(grid=14, probability=probability)


@pytest.mark.parametrize(("grid", "ratio"), [(2, (0.1, 0.5)), (14, (0.0, 0.5))])
def test_every_image_chosen_for_masking_gets_a_mask(grid: int, ratio: tuple[float, float]) -> None:
    counts = masked_counts(BlockMasking(grid, ratio, probability=0.5), 16, n_batches=40)
    assert all(int((c > 0).sum()) == 8 for c in counts)


# ---------------------------------------------------------------- masks in the batches


def test_build_masking_follows_the_config() -> None:
    assert build_masking(MaskConfig(enabled=False), 224, 16) is None
    masking = build_masking(MaskConfig(enabled=True, ratio=(0.2, 0.4), probability=0.75, aspect=(0.5, 2.0)), 224, 14)
    assert isinstance(masking, BlockMasking)
    assert masking.grid == 16
    assert masking.ratio == (0.2, 0.4) and masking.probability == 0.75
    assert masking.log_aspect == pytest.approx((math.log(0.5), math.log(2.0)))


def tiny_mask_config(fmnist_dir: Path, tmp_path: Path, **mask) -> config_lib.Config:
    raw = {k: dict(v) for k, v in TINY_OVERRIDES.items()}
    raw["data"]["path"] = str(fmnist_dir)
    raw["train"]["output_dir"] = str(tmp_path / "run")
    raw["mask"] = {"enabled": True, **mask}
    raw["loss"]["ibot_weight"] = 1.0
    raw["head"]["patch_out_dim"] = 64
    return config_lib.from_dict(raw)


def test_batches_carry_reproducible_masks_for_the_two_global_crops(fmnist_dir: Path, tmp_path: Path) -> None:
    cfg = tiny_mask_config(fmnist_dir, tmp_path, probability=0.5)
    dataset = build_dataset(cfg.data, cfg.model.in_chans)
    augmentation = build_augmentation(cfg.data)
    masking = build_masking(cfg.mask, cfg.data.global_crops_size, cfg.model.patch_size)
    b = cfg.optim.batch_size

    def batches(epoch: int, start: int = 0) -> MultiCropBatches:
        return MultiCropBatches(dataset, augmentation, b, cfg.train.seed, epoch, start_batch=start, masking=masking)

    first = batches(0)[1]
    assert isinstance(first, Batch)
    assert first.masks.shape == (2 * b, 16) and first.masks.dtype == torch.bool
    assert int(first.masks.any(1).sum()) == round(0.5 * 2 * b)
    assert torch.equal(first.masks, batches(0)[1].masks)  # the same batch, the same masks
    assert torch.equal(first.masks, batches(0, start=1)[0].masks)  # ... also when resuming mid-epoch
    assert not torch.equal(first.masks, batches(0)[0].masks)
    assert not torch.equal(first.masks, batches(1)[1].masks)
    # without masking the batch has no masks
    plain = MultiCropBatches(dataset, augmentation, b, cfg.train.seed, 0)[1]
    assert plain.masks is None
    for x, y in zip(plain.crops, first.crops, strict=True):
        assert torch.equal(x, y)  # masks are drawn after the crops: the crops are the same either way
