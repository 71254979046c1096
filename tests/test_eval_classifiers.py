"""Linear-probe grid, logistic regression (against scikit-learn) and low-shot on feature sets with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from dinolab.eval import TokenFeatures, fit_logreg, linear_probe_grid, logistic_regression, low_shot, lowshot_subset
from dinolab.eval.linear import HeadGroup
from dinolab.eval.logreg import C_GRID, DINOV2_C_GRID


def blobs(n_per_class: int, num_classes: int, dim: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Well separated Gaussian blobs, one per class, centered on scaled basis vectors."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    return 3 * torch.eye(dim)[labels] + noise * torch.randn(len(labels), dim, generator=g), labels


def random_labeled(n: int, dim: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.randint(0, num_classes, (n,), generator=g)


def tokens(x: torch.Tensor, y: torch.Tensor, blocks: int = 4, seed: int = 0) -> TokenFeatures:
    """Token features whose last block's [CLS] is `x`; earlier blocks and pooled patches are noise."""
    g = torch.Generator().manual_seed(seed)
    earlier = torch.randn(len(x), blocks - 1, x.shape[1], generator=g)
    return TokenFeatures(torch.cat([earlier, x.unsqueeze(1)], dim=1), torch.randn(x.shape, generator=g), y)


# ---------------------------------------------------------------- linear-probe grid


def test_linear_grid_separable_classes_are_classified_perfectly() -> None:
    train, test = tokens(*blobs(40, 4, 8, 0.3, seed=0)), tokens(*blobs(20, 4, 8, 0.3, seed=1), seed=1)
    result = linear_probe_grid(train, test, lrs=(1e-3, 0.1), epochs=5, batch_size=32, quiet=True)
    assert len(result["grid"]) == 2 * 2 * 2  # lrs x {1, 4 blocks} x {CLS, CLS + avgpool}
    assert {(r["blocks"], r["avgpool"]) for r in result["grid"]} == {(1, False), (1, True), (4, False), (4, True)}
    assert result["top1"] == 100.0 and result["best"]["val_top1"] == 100.0


def test_linear_grid_random_labels_give_chance() -> None:
    train, test = tokens(*random_labeled(600, 16, 10, seed=0)), tokens(*random_labeled(400, 16, 10, seed=1), seed=1)
    result = linear_probe_grid(train, test, lrs=(0.01, 0.1), blocks=(1,), epochs=3, batch_size=64, quiet=True)
    assert result["top1"] < 20.0  # chance is 10%


def test_heads_trained_together_follow_their_own_sgd_path() -> None:
    """The grid's batched update equals torch.optim.SGD(momentum=0.9) on each head alone."""
    x, y = random_labeled(64, 6, 3, seed=0)
    lrs = (0.05, 0.5)
    group = HeadGroup(6, 3, lrs, torch.Generator().manual_seed(0))
    alone = [torch.nn.Linear(6, 3) for _ in lrs]
    optimizers = []
    for h, (head, lr) in enumerate(zip(alone, lrs, strict=True)):
        with torch.no_grad():
            head.weight.copy_(group.weight[h].T)
            head.bias.copy_(group.bias[h, 0])
        optimizers.append(torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9))
    for step, scale in enumerate((1.0, 0.7, 0.3)):
        batch = slice(16 * step, 16 * step + 16)
        group.loss(x[batch], y[batch]).backward()
        group.sgd_step(scale)
        for head, opt, lr in zip(alone, optimizers, lrs, strict=True):
            opt.param_groups[0]["lr"] = lr * scale
            torch.nn.functional.cross_entropy(head(x[batch]), y[batch]).backward()
            opt.step()
            opt.zero_grad()
    for h, head in enumerate(alone):
        torch.testing.assert_close(group.weight[h].detach().T, head.weight.detach())
        torch.testing.assert_close(group.bias[h, 0].detach(), head.bias.detach())


def test_linear_grid_skips_block_counts_that_were_not_extracted() -> None:
    train, test = tokens(*blobs(10, 2, 4, 0.1, 0), blocks=1), tokens(*blobs(5, 2, 4, 0.1, 1), blocks=1)
    result = linear_probe_grid(train, test, lrs=(0.1,), epochs=1, quiet=True)
    assert {r["blocks"] for r in result["grid"]} == {1}
    with pytest.raises(ValueError, match="none of the block counts"):
        linear_probe_grid(train, test, blocks=(4,), quiet=True)


def test_linear_grid_rejects_mismatched_dimensions() -> None:
    train, test = tokens(*blobs(10, 2, 4, 0.1, 0)), tokens(*blobs(5, 2, 6, 0.1, 1))
    with pytest.raises(ValueError, match="train features have dimension 4 but test features 6"):
        linear_probe_grid(train, test, quiet=True)


# ---------------------------------------------------------------- logistic regression


@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_logreg_matches_scikit_learn(C: float) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    y = (x @ torch.randn(6, 3, generator=g, dtype=torch.float64) + torch.randn(200, 3, generator=g)).argmax(1)
    ours = fit_logreg(x, y, C, tol=1e-10)
    reference = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(torch.softmax(ours.logits(x), 1).numpy(), reference.predict_proba(x.numpy()), atol=1e-5)
    np.testing.assert_allclose(ours.weight.T.numpy(), reference.coef_, atol=1e-3, rtol=1e-3)


def test_logreg_separable_perfect_random_chance_and_c_sweep() -> None:
    result = logistic_regression(*blobs(30, 4, 8, 0.3, 0), *blobs(20, 4, 8, 0.3, 1), quiet=True)
    assert result["top1"] == 100.0
    assert [r["C"] for r in result["grid"]] == sorted(C_GRID) and result["sweep_C"] in C_GRID
    # the sweep's C is rescaled to the refit's number of images: same regularization per image
    assert result["sweep_size"] == 108 and result["C"] == pytest.approx(result["sweep_C"] * 108 / 120)
    capped = logistic_regression(*blobs(30, 4, 8, 0.3, 0), *blobs(20, 4, 8, 0.3, 1), sweep_size=50, quiet=True)
    assert capped["sweep_size"] == 50 and capped["top1"] == 100.0
    chance = logistic_regression(*random_labeled(500, 16, 10, 0), *random_labeled(500, 16, 10, 1), c_grid=(0.1, 1.0),
                                 quiet=True)
    assert chance["top1"] < 20.0
    assert len(DINOV2_C_GRID) == 45
    assert DINOV2_C_GRID[0] == pytest.approx(1e-6) and DINOV2_C_GRID[-1] == pytest.approx(1e5)


def test_logreg_rejects_bad_input() -> None:
    x, y = blobs(10, 2, 4, 0.1, 0)
    with pytest.raises(ValueError, match="train features have dimension 4 but test features 5"):
        logistic_regression(x, y, torch.randn(3, 5), y[:3], quiet=True)
    with pytest.raises(ValueError, match="20 train feature rows but 19 labels"):
        logistic_regression(x, y[:19], x, y, quiet=True)


# ---------------------------------------------------------------- low-shot


def test_lowshot_subsets_are_balanced_seeded_and_sized() -> None:
    labels = torch.arange(4).repeat_interleave(50)  # 50 images in each of 4 classes
    for budget, per_class in (("10%", 5), ("1%", 1), ("3/class", 3)):  # 1% of 50 rounds to 0: at least one
        idx = lowshot_subset(labels, budget, seed=0)
        assert torch.bincount(labels[idx]).tolist() == [per_class] * 4
        assert torch.equal(idx, lowshot_subset(labels, budget, seed=0))
    assert not torch.equal(lowshot_subset(labels, "10%", 0), lowshot_subset(labels, "10%", 1))


def test_lowshot_errors_name_the_problem() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="class 1 has 2 training images, fewer than the low-shot budget of 3"):
        lowshot_subset(labels, "3/class", seed=0)
    for bad in ("0%", "150%", "x/class", "0/class", "ten"):
        with pytest.raises(ValueError, match="is not 'P%'"):
            lowshot_subset(labels, bad, seed=0)
    x, y = blobs(10, 2, 4, 0.1, 0)
    with pytest.raises(ValueError, match="k=20 is larger than the 4 labeled images of the 2/class budget"):
        low_shot(x, y, x, y, budgets=("2/class",), classifier="knn", k=20)


def test_lowshot_separable_classes_and_seed_statistics() -> None:
    train, test = blobs(50, 4, 8, 0.3, 0), blobs(20, 4, 8, 0.3, 1)
    for classifier in ("logreg", "knn"):
        result = low_shot(*train, *test, budgets=("10%", "2/class"), seeds=(0, 1, 2), classifier=classifier, k=3)
        for r in result.values():
            assert r["mean"] == 100.0 and r["std"] == 0.0 and len(r["runs"]) == 3
        assert result["10%"]["labeled_images"] == 20 and result["2/class"]["labeled_images"] == 8
    noisy = low_shot(*random_labeled(400, 8, 4, 0), *random_labeled(200, 8, 4, 1), budgets=("10/class",))
    assert noisy["10/class"]["mean"] < 40.0 and noisy["10/class"]["std"] > 0.0  # chance is 25%
