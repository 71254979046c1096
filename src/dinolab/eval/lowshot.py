"""Low-shot classification on frozen features: only a few labeled training images (iBOT's semi-supervised table).

A budget is "P%" (P percent of every class's images, at least one) or "N/class" (N images of every class).
Subsets are class-balanced and drawn with fixed seeds; each budget is evaluated for several seeds and reported
as mean and standard deviation of test top-1. The classifier is logistic regression with a fixed C (there are
too few labels to hold out a validation split for choosing it) or weighted k-NN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dinolab.eval.features import check_features
from dinolab.eval.knn import knn_classify
from dinolab.eval.logreg import fit_logreg


def parse_budget(budget: str) -> tuple[str, float]:
    """"1%" -> ("percent", 1.0); "5/class" -> ("per_class", 5)."""
    try:
        if budget.endswith("%"):
            value = float(budget[:-1])
            if 0 < value <= 100:
                return "percent", value
        elif budget.endswith("/class"):
            value = int(budget[: -len("/class")])
            if value > 0:
                return "per_class", value
    except ValueError:
        pass
    raise ValueError(f"low-shot budget {budget!r} is not 'P%' (0 < P <= 100) or 'N/class' (N >= 1), e.g. 1% or 5/class")


def lowshot_subset(labels: Tensor, budget: str, seed: int) -> Tensor:
    """Indices of a class-balanced labeled subset of the given budget; the same seed gives the same subset."""
    kind, value = parse_budget(budget)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten()
        take = max(1, round(value / 100 * len(members))) if kind == "percent" else int(value)
        if take > len(members):
            raise ValueError(
                f"class {c} has {len(members)} training images, fewer than the low-shot budget of {take} per class"
            )
        chosen.append(members[torch.randperm(len(members), generator=generator)[:take]])
    return torch.cat(chosen).sort().values


def low_shot(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    budgets: Sequence[str] = ("1%", "10%", "5/class"),
    seeds: Sequence[int] = (0, 1, 2),
    classifier: str = "logreg",
    C: float = 1.0,
    k: int = 20,
    temperature: float = 0.07,
) -> dict[str, dict]:
    """Test top-1 (%) per budget: mean and std over seeds, each seed's value, and the number of labels used."""
    check_features(train_x, train_y, test_x, test_y)
    if classifier not in ("logreg", "knn"):
        raise ValueError(f"low-shot classifier must be 'logreg' or 'knn', got {classifier!r}")
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    results = {}
    for budget in budgets:
        runs, sizes = [], []
        for seed in seeds:
            idx = lowshot_subset(train_y, budget, seed)
            if classifier == "knn":
                if k > len(idx):
                    raise ValueError(
                        f"k={k} is larger than the {len(idx)} labeled images of the {budget} budget: use a smaller k"
                    )
                scores = knn_classify(train_x[idx], train_y[idx], test_x, test_y, ks=(k,), temperature=temperature)
                top1 = scores[k]["top1"]
            else:
                top1 = fit_logreg(train_x[idx], train_y[idx], C, num_classes).accuracy(test_x, test_y)
            runs.append(top1)
            sizes.append(len(idx))
        t = torch.tensor(runs, dtype=torch.float64)
        results[budget] = {
            "mean": float(t.mean()), "std": float(t.std()) if len(runs) > 1 else 0.0, "runs": runs,
            "labeled_images": sizes[0],
        }
    return results
