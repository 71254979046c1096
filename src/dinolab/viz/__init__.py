"""Visualization: [CLS] attention maps and masks, DINOv2 PCA maps, training curves, the HTML explorer,
and the silhouette IoU that scores the masks."""

from dinolab.viz.attention import AttentionMaps, attention_maps, cls_attention, mass_mask, write_attention_figures
from dinolab.viz.curves import save_curves
from dinolab.viz.explorer import build_explorer, serve
from dinolab.viz.inputs import VizModel, read_image
from dinolab.viz.pca import PCAMaps, image_features, pca_maps, write_pca_figures
from dinolab.viz.silhouette import iou_markdown, silhouette_iou, silhouette_scores

__all__ = [
    "AttentionMaps",
    "PCAMaps",
    "VizModel",
    "attention_maps",
    "build_explorer",
    "cls_attention",
    "image_features",
    "iou_markdown",
    "mass_mask",
    "pca_maps",
    "read_image",
    "save_curves",
    "serve",
    "silhouette_iou",
    "silhouette_scores",
    "write_attention_figures",
    "write_pca_figures",
]
