"""Evaluation of frozen features: feature extraction and weighted k-NN."""

from dinolab.eval.features import extract_features, pixel_features
from dinolab.eval.knn import knn, knn_classify

__all__ = ["extract_features", "knn", "knn_classify", "pixel_features"]
