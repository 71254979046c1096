"""Matplotlib helpers shared by the figures: panels without pyplot (no global state, no display needed).

Matplotlib (~0.5 s to import) is imported when the first figure is made, not when dinolab.viz is: training
imports the curves module but draws only at the end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PANEL_INCHES = 2.0


def new_figure(rows: int, cols: int, panel_inches: float = PANEL_INCHES) -> tuple[Figure, np.ndarray]:
    """A figure of rows x cols panels; `axes` is always a 2-D array."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_inches * cols, panel_inches * rows), constrained_layout=True)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def show_image(ax: Axes, image: np.ndarray, title: str) -> None:
    """A uint8 (H, W, C) image, grayscale when C is 1."""
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def show_mask_overlay(ax: Axes, image: np.ndarray, mask: np.ndarray, title: str) -> None:
    """The image with pixels outside the (H, W) bool mask dimmed and the kept region tinted."""
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
    rgb = rgb.astype(np.float32) / 255
    tint = np.array([1.0, 0.35, 0.1], dtype=np.float32)
    shown = np.where(mask[..., None], 0.6 * rgb + 0.4 * tint, 0.3 * rgb)
    ax.imshow(shown, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
