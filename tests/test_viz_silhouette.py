"""Silhouette IoU of the attention and PCA masks (the DINO paper's Jaccard, on images on black)."""

from __future__ import annotations

import numpy as np
from conftest import small_vit

from dinolab.viz.inputs import VizModel
from dinolab.viz.silhouette import iou_markdown, per_image_scores, silhouette_iou, silhouette_scores


def test_per_image_scores_known_values() -> None:
    pred = np.zeros((3, 4, 4), dtype=bool)
    target = np.zeros((3, 4, 4), dtype=bool)
    pred[0, :2], target[0, :1] = True, True  # 8 predicted pixels, 4 of them on the 4-pixel target
    pred[1, :2], target[1, 2:] = True, True  # disjoint
    scores = per_image_scores(pred, target)  # image 2: both empty
    np.testing.assert_allclose(scores["iou"], [0.5, 0.0, 1.0])
    np.testing.assert_allclose(scores["precision"], [0.5, 0.0, 0.0])
    np.testing.assert_allclose(scores["recall"], [1.0, 0.0, 1.0])


def test_scores_on_a_planted_square() -> None:
    images = np.zeros((6, 28, 28, 1), dtype=np.uint8)
    for i, image in enumerate(images):
        image[7 * (i % 3) : 7 * (i % 3) + 14, 7:21] = 200  # a 14x14 object: 4 of the 16 patches
    model = VizModel(small_vit().eval(), mean=(0.3,), std=(0.35,))
    scores = silhouette_scores(model, images)
    assert set(scores) == {"attention_mass", "pca_foreground", "all_foreground"}
    for by_metric in scores.values():
        assert all(v.shape == (6,) and ((v >= 0) & (v <= 1)).all() for v in by_metric.values())
    np.testing.assert_allclose(scores["all_foreground"]["iou"], 196 / 784)
    # The object covers whole patches, so even a random-init ViT's first principal component splits it off exactly
    np.testing.assert_array_equal(scores["pca_foreground"]["iou"], 1)
    means = silhouette_iou(model, images)
    assert means == {name: float(s["iou"].mean()) for name, s in scores.items()}  # deterministic
    table = iou_markdown({"random init": means})
    assert table.splitlines()[2].startswith("| random init | ")
