"""Blockwise patch masks for masked-image modeling (iBOT / DINOv2), following BEiT's generator.

A fraction of the images in a batch get a mask; each masked image gets a ratio drawn from a range
(stratified over the batch, as in DINOv2, so a batch covers the range evenly), and the mask is
grown from random rectangular blocks with a random aspect ratio until the target count is reached.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class BlockMasking:
    """Masks for a (grid x grid) patch grid; call with a batch size and a torch.Generator."""

    def __init__(
        self,
        grid: int,
        ratio: tuple[float, float] = (0.1, 0.5),
        probability: float = 0.5,
        aspect: tuple[float, float] = (0.3, 1 / 0.3),
        min_block: int = 4,
    ):
        if not 0 <= ratio[0] <= ratio[1] < 1:
            raise ValueError(f"mask ratio range {ratio} must satisfy 0 <= lo <= hi < 1")
        if not 0 <= probability <= 1:
            raise ValueError(f"mask probability {probability} must be in [0, 1]")
        self.grid, self.ratio, self.probability = grid, ratio, probability
        self.log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
        self.min_block = min_block

    def __call__(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """(batch_size, grid*grid) bool; the first round(probability * batch) images are masked, then
        the rows are shuffled so which images are masked is random."""
        n = self.grid * self.grid
        masks = torch.zeros(batch_size, n, dtype=torch.bool)
        n_masked = round(self.probability * batch_size)
        bounds = torch.linspace(self.ratio[0], self.ratio[1], n_masked + 1).tolist()
        for i in range(n_masked):
            ratio = bounds[i] + (bounds[i + 1] - bounds[i]) * _uniform(generator)
            masks[i] = self.block_mask(max(1, int(ratio * n)), generator).flatten()  # a chosen image gets >= 1
        return masks[torch.randperm(batch_size, generator=generator)]

    def block_mask(self, target: int, generator: torch.Generator) -> Tensor:
        """A (grid, grid) mask of about `target` patches (never more) made of rectangular blocks."""
        mask = torch.zeros(self.grid, self.grid, dtype=torch.bool)
        count = 0
        while count < target:
            added = self._add_block(mask, target - count, generator)
            if added == 0:
                break
            count += added
        return mask

    def _add_block(self, mask: Tensor, budget: int, generator: torch.Generator) -> int:
        """Try (10 times) to mask one block adding 1..budget new patches; returns how many it added."""
        low = min(self.min_block, budget)
        for _ in range(10):
            area = low + (budget - low) * _uniform(generator)
            aspect = math.exp(self.log_aspect[0] + (self.log_aspect[1] - self.log_aspect[0]) * _uniform(generator))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if not (0 < h < self.grid and 0 < w < self.grid):
                continue
            top = int(torch.randint(0, self.grid - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, self.grid - w + 1, (1,), generator=generator))
            block = mask[top : top + h, left : left + w]
            new = h * w - int(block.sum())
            if 0 < new <= budget:
                block.fill_(True)
                return new
        return 0


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))
