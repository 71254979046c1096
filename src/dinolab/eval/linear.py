"""DINOv2's linear-probe grid: many linear heads trained at once on precomputed frozen features.

One head per (learning rate, input), the input being the [CLS] token of the last 1 or 4 blocks, with or
without the average-pooled patch tokens appended. All heads see the same mini-batches in one pass over the
features: the heads that share an input are one batched matrix product, and since they are independent (the
loss is a sum of per-head losses) each one follows exactly the SGD path it would alone. SGD with momentum 0.9,
no weight decay, batch 1024 (DINOv2's 8 GPUs x 128), learning rate scaled by batch size / 256 and decayed by a
per-step cosine to 0, weights initialized N(0, 0.01) as in DINOv2. The head with the best accuracy on a
held-out split of the training set is the one reported on the test set; the whole grid is reported too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dinolab.eval.features import check_features, holdout_split
from dinolab.eval.tokens import TokenFeatures
from dinolab.progress import progress

DINOV2_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)


class HeadGroup:
    """All heads that read one input: weights (H, D, C) and biases (H, C), one learning rate per head."""

    def __init__(self, dim: int, num_classes: int, lrs: Sequence[float], generator: torch.Generator):
        self.lrs = torch.tensor(lrs).view(-1, 1, 1)
        self.weight = (0.01 * torch.randn(len(lrs), dim, num_classes, generator=generator)).requires_grad_()
        self.bias = torch.zeros(len(lrs), 1, num_classes, requires_grad=True)
        self.momentum = [torch.zeros_like(self.weight), torch.zeros_like(self.bias)]

    def logits(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x.unsqueeze(0).expand(len(self.lrs), -1, -1), self.weight)  # (H, B, C)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Sum over heads of each head's mean cross-entropy: every head gets its own, unscaled gradient."""
        logits = self.logits(x)
        return F.cross_entropy(logits.flatten(0, 1), y.repeat(len(self.lrs)), reduction="sum") / len(y)

    @torch.no_grad()
    def sgd_step(self, lr_scale: float, momentum: float = 0.9) -> None:
        """torch.optim.SGD's update (buf = m * buf + grad; p -= lr * buf), with a learning rate per head."""
        for param, buf in zip((self.weight, self.bias), self.momentum, strict=True):
            buf.mul_(momentum).add_(param.grad)
            param.sub_(lr_scale * self.lrs * buf)
            param.grad = None

    @torch.no_grad()
    def accuracy(self, x: Tensor, y: Tensor, chunk_size: int = 4096) -> Tensor:
        correct = torch.zeros(len(self.lrs))
        for start in range(0, len(x), chunk_size):
            pred = self.logits(x[start : start + chunk_size]).argmax(dim=2)
            correct += (pred == y[start : start + chunk_size]).sum(dim=1)
        return 100.0 * correct / len(x)


def linear_probe_grid(
    train: TokenFeatures,
    test: TokenFeatures,
    lrs: Sequence[float] = DINOV2_LRS,
    blocks: Sequence[int] = (1, 4),
    epochs: int = 10,
    batch_size: int = 1024,
    val_fraction: float = 0.1,
    seed: int = 0,
    quiet: bool = False,
) -> dict:
    """Train the grid on train minus a held-out split; report the best head (by validation) on test."""
    blocks = sorted({b for b in blocks if b <= train.num_blocks})
    if not blocks:
        raise ValueError(f"none of the block counts asked for fit the {train.num_blocks} extracted block(s)")
    inputs = {(b, pool): (train.select(b, pool), test.select(b, pool)) for b in blocks for pool in (False, True)}
    for train_x, test_x in inputs.values():
        check_features(train_x, train.labels, test_x, test.labels)
    fit_idx, val_idx = holdout_split(len(train), val_fraction, seed)
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    generator = torch.Generator().manual_seed(seed)
    scaled_lrs = [lr * batch_size / 256 for lr in lrs]
    groups = {key: HeadGroup(x.shape[1], num_classes, scaled_lrs, generator) for key, (x, _) in inputs.items()}

    steps_per_epoch = math.ceil(len(fit_idx) / batch_size)
    total_steps, step = epochs * steps_per_epoch, 0
    for _ in progress(range(epochs), desc="linear grid", unit="epoch", disable=quiet):
        order = fit_idx[torch.randperm(len(fit_idx), generator=generator)]
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            lr_scale = 0.5 * (1 + math.cos(math.pi * step / total_steps))
            for key, group in groups.items():
                group.loss(inputs[key][0][batch], train.labels[batch]).backward()
                group.sgd_step(lr_scale)
            step += 1

    grid = []
    for (b, pool), group in groups.items():
        train_x, test_x = inputs[(b, pool)]
        val_acc = group.accuracy(train_x[val_idx], train.labels[val_idx])
        test_acc = group.accuracy(test_x, test.labels)
        for lr, v, t in zip(lrs, val_acc.tolist(), test_acc.tolist(), strict=True):
            grid.append({"blocks": b, "avgpool": pool, "lr": lr, "val_top1": v, "top1": t})
    best = max(grid, key=lambda r: r["val_top1"])
    return {"top1": best["top1"], "best": best, "grid": grid, "epochs": epochs, "batch_size": batch_size}
