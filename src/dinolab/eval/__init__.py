"""Evaluation of frozen features: one module per protocol, all reading the features of features.py.

knn (weighted k-NN), linear (DINOv2's linear-probe grid), logreg (logistic regression, C sweep), lowshot
(1% / 10% / N-per-class labels), retrieval (recall@k, mAP), copy_detection, clustering (k-means: Hungarian
accuracy, NMI, ARI), patch_probe (patch-level linear probe, mIoU); baselines (random init, raw pixels);
suite runs them all on one model.
"""

from dinolab.eval.baselines import MODEL_KINDS, PixelBaseline, model_of_kind, random_init_like
from dinolab.eval.clustering import ari, cluster_accuracy, clustering, kmeans, nmi
from dinolab.eval.copy_detection import copy_detection, make_copy
from dinolab.eval.features import extract_patch_tokens, extract_tokens
from dinolab.eval.knn import knn, knn_classify, knn_scores
from dinolab.eval.linear import linear_probe_grid
from dinolab.eval.logreg import fit_logreg, logistic_regression
from dinolab.eval.lowshot import low_shot, lowshot_subset
from dinolab.eval.patch_probe import patch_probe, silhouette_patch_labels
from dinolab.eval.retrieval import retrieval
from dinolab.eval.suite import PROTOCOLS, Evaluation, model_to_evaluate, run_all
from dinolab.eval.tokens import Preprocess, TokenFeatures

__all__ = [
    "MODEL_KINDS", "PROTOCOLS", "Evaluation", "PixelBaseline", "Preprocess", "TokenFeatures", "ari",
    "cluster_accuracy", "clustering", "copy_detection", "extract_patch_tokens", "extract_tokens", "fit_logreg",
    "kmeans", "knn", "knn_classify", "knn_scores", "linear_probe_grid", "logistic_regression", "low_shot",
    "lowshot_subset", "make_copy", "model_of_kind", "model_to_evaluate", "nmi", "patch_probe", "random_init_like",
    "retrieval", "run_all", "silhouette_patch_labels",
]
