"""Multinomial logistic regression on frozen features, L-BFGS in torch, with DINOv2's sweep of C.

The objective is scikit-learn's (penalty="l2"): C * sum of cross-entropies + ||W||^2 / 2, bias unpenalized,
divided by C * N so that its scale does not depend on C or on the number of images. DINOv2's protocol: pick C
from 10^linspace(-6, 5, 45) by accuracy on a held-out 10% of the training set, refit on all of it with that C,
report test accuracy. Two economies make it affordable on a CPU: by default only every fourth C of that grid is
tried (C_GRID; pass DINOV2_C_GRID for all 45), and the sweep fits on at most 10,000 training images (see
`fit_with_c_sweep`). Full-batch L-BFGS in float64, each C warm-started from the solution for the previous one
(the sweep runs from strong to weak regularization), at most 100 iterations per fit (scikit-learn's default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dinolab.eval.features import check_features, holdout_split
from dinolab.progress import progress

DINOV2_C_GRID = tuple((10 ** torch.linspace(-6, 5, 45, dtype=torch.float64)).tolist())
C_GRID = DINOV2_C_GRID[::4]  # the same range at integer powers of ten: 12 fits instead of 45 (the default)


@dataclass
class LinearClassifier:
    weight: Tensor  # (D, K)
    bias: Tensor  # (K,)

    def logits(self, x: Tensor) -> Tensor:
        return x.to(self.weight.dtype) @ self.weight + self.bias

    def predict(self, x: Tensor) -> Tensor:
        return self.logits(x).argmax(dim=1)

    def accuracy(self, x: Tensor, y: Tensor) -> float:
        return 100.0 * float((self.predict(x) == y).double().mean())


def fit_logreg(
    x: Tensor,
    y: Tensor,
    C: float,
    num_classes: int | None = None,
    max_iter: int = 100,
    tol: float = 1e-6,
    init: LinearClassifier | None = None,
) -> LinearClassifier:
    """Minimize mean cross-entropy + ||W||^2 / (2 C N) with full-batch L-BFGS (strong Wolfe line search)."""
    x = x.to(torch.float64)
    num_classes = num_classes or int(y.max()) + 1
    n, dim = x.shape
    weight = (init.weight.clone() if init else torch.zeros(dim, num_classes, dtype=torch.float64)).requires_grad_()
    bias = (init.bias.clone() if init else torch.zeros(num_classes, dtype=torch.float64)).requires_grad_()
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12, history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + weight.square().sum() / (2 * C * n)
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearClassifier(weight.detach(), bias.detach())


def sweep_c(
    train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, c_grid: Sequence[float] = C_GRID,
    max_iter: int = 100, quiet: bool = False,
) -> tuple[LinearClassifier, float, list[dict[str, float]]]:
    """The classifier and C with the best validation accuracy (the smallest such C on ties), every C's accuracy."""
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    grid, model, best = [], None, None
    for C in progress(sorted(c_grid), desc="logreg C sweep", unit="C", disable=quiet):
        model = fit_logreg(train_x, train_y, C, num_classes, max_iter, init=model)
        grid.append({"C": C, "val_top1": model.accuracy(val_x, val_y)})
        if best is None or grid[-1]["val_top1"] > best[2]:
            best = (model, C, grid[-1]["val_top1"])
    return best[0], best[1], grid


def fit_with_c_sweep(
    x: Tensor,
    y: Tensor,
    fit_idx: Tensor,
    val_idx: Tensor,
    c_grid: Sequence[float] = C_GRID,
    sweep_size: int | None = 10_000,
    max_iter: int = 100,
    quiet: bool = False,
) -> tuple[LinearClassifier, dict]:
    """Choose C on (rows `fit_idx`, scored on rows `val_idx`), then refit on all rows.

    The sweep fits on at most `sweep_size` of the `fit_idx` rows (the first ones: pass them shuffled). Its best C
    is rescaled by (rows in the sweep) / (all rows), which keeps the per-row regularization 1 / (C N) and hence
    the optimum's scale, so the refit starts from the sweep's solution and needs few iterations.
    """
    if sweep_size and len(fit_idx) > sweep_size:
        fit_idx = fit_idx[:sweep_size]
    sweep_model, sweep_best, grid = sweep_c(x[fit_idx], y[fit_idx], x[val_idx], y[val_idx], c_grid, max_iter, quiet)
    C = sweep_best * len(fit_idx) / len(x)
    model = fit_logreg(x, y, C, sweep_model.weight.shape[1], max_iter, init=sweep_model)
    return model, {"C": C, "sweep_C": sweep_best, "sweep_size": len(fit_idx), "grid": grid}


def logistic_regression(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    c_grid: Sequence[float] = C_GRID,
    val_fraction: float = 0.1,
    sweep_size: int | None = 10_000,
    seed: int = 0,
    max_iter: int = 100,
    quiet: bool = False,
) -> dict:
    """DINOv2's protocol: C chosen on a held-out split of train, refit on all of train, accuracy (%) on test."""
    check_features(train_x, train_y, test_x, test_y)
    fit_idx, val_idx = holdout_split(len(train_x), val_fraction, seed)
    model, info = fit_with_c_sweep(train_x, train_y, fit_idx, val_idx, c_grid, sweep_size, max_iter, quiet)
    return {"top1": model.accuracy(test_x, test_y), **info}
