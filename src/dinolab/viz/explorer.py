"""The interactive explorer: one self-contained HTML file (inline CSS and JS, data embedded, no network).

Embedded per image, base64 in one JSON block: the image as PNG; its patch and [CLS] features, L2-normalized,
as float16 (cosine similarity is then a dot product in the page); the [CLS] attention of each head and of
the head mean, each map scaled to 0..255; the PCA colours (pca.py, computed over the shown set).

All images are resized (shorter side) and center-cropped to one square size, by default the size the
model was trained at. Caps: at most `max_images` images (default 1000) and a file of about `max_megabytes`
(default 50 MB; the size per image is estimated from the grid, width and image size before any image is
read). With more images than the caps allow, an evenly spaced subset is shown and the log says so.
A 28 px Fashion-MNIST image with a width-192 ViT/7 costs about 10 KB; a 224 px RGB image with a
ViT-S/14 about 470 KB, so the default caps hold 1000 of the former and about 110 of the latter.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from dinolab.viz.attention import cls_attention
from dinolab.viz.inputs import VizModel, read_images
from dinolab.viz.pca import image_features, pca_maps

log = logging.getLogger(__name__)

MAX_IMAGES = 1000
MAX_MEGABYTES = 50
DISPLAY_SIZE = 112  # pixels per tile side; images are scaled up by a whole factor and drawn pixelated
NEIGHBORS = 10  # rows of the nearest-images panel
BATCH_SIZE = 64


def bytes_per_image(model: VizModel, size: int) -> int:
    """An upper estimate of what one image adds to the file (uncompressed PNG; base64 is 4/3 of binary)."""
    patches = (size // model.patch_size) ** 2
    dim = model.backbone.embed_dim
    binary = 2 * patches * dim + 2 * dim + (model.backbone.num_heads + 1) * patches + 3 * patches
    return math.ceil(4 / 3 * (binary + size * size * model.channels + 100)) + 200


def image_cap(model: VizModel, size: int, max_images: int = MAX_IMAGES, max_megabytes: float = MAX_MEGABYTES) -> int:
    """How many images fit under both caps."""
    return max(1, min(max_images, int(max_megabytes * 2**20 // bytes_per_image(model, size))))


def evenly_spaced(items: list, cap: int) -> list:
    if len(items) <= cap:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, cap).round().astype(int)]


def explorer_data(
    model: VizModel, images: list[np.ndarray], names: list[str], note: str = ""
) -> dict:
    """The JSON the page reads: same-size uint8 (H, W, C) images -> encoded images, features, maps."""
    cls, features, attention = [], [], []
    for start in range(0, len(images), BATCH_SIZE):
        x = model.to_tensor(images[start : start + BATCH_SIZE])
        batch_cls, batch_patches = image_features(model.backbone, x)
        cls.append(batch_cls)
        features.append(batch_patches)
        heads = cls_attention(model.backbone, x)
        attention.append(np.concatenate([heads, heads.mean(axis=1, keepdims=True)], axis=1))
    cls, features = np.concatenate(cls), np.concatenate(features)  # (N, D), (N, gh, gw, D)
    attention = np.concatenate(attention)  # (N, heads + 1, gh, gw)
    attention = np.round(255 * attention / attention.max(axis=(2, 3), keepdims=True)).astype(np.uint8)
    pca = pca_maps(list(features))
    n, gh, gw, dim = features.shape
    return {
        "names": names,
        "image_size": list(images[0].shape[:2]),
        "grid": [gh, gw],
        "patch_size": model.patch_size,
        "dim": dim,
        "heads": model.backbone.num_heads,
        "display_size": DISPLAY_SIZE,
        "neighbors": NEIGHBORS,
        "note": note,
        "images": [_png_base64(img) for img in images],
        "patch_features": _float16_base64(_unit(features.reshape(n, gh * gw, dim))),
        "cls_features": _float16_base64(_unit(cls)),
        "attention": _base64(attention),
        "pca_rgb": _base64(np.round(255 * np.stack(pca.rgb)).astype(np.uint8)),
    }


def render_html(data: dict, title: str = "dinolab explorer") -> str:
    """The page with its CSS, JS and data inlined ('<' escaped in the JSON so no string can end the script)."""
    assets = resources.files("dinolab.viz")
    page = assets.joinpath("explorer.html").read_text(encoding="utf-8")
    for key, value in (
        ("{{STYLE}}", assets.joinpath("explorer.css").read_text(encoding="utf-8")),
        ("{{SCRIPT}}", assets.joinpath("explorer.js").read_text(encoding="utf-8")),
        ("{{DATA}}", json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")),
        ("{{TITLE}}", title.replace("&", "&amp;").replace("<", "&lt;")),
    ):
        page = page.replace(key, value)
    return page


def build_explorer(
    model: VizModel,
    paths: list[str | Path],
    out: str | Path,
    size: int | None = None,
    max_images: int = MAX_IMAGES,
    max_megabytes: float = MAX_MEGABYTES,
) -> Path:
    """Read the images, compute everything and write the HTML file to `out`."""
    size = size or model.native_size
    cap = image_cap(model, size, max_images, max_megabytes)
    shown = evenly_spaced([Path(p) for p in paths], cap)
    note = f"{len(shown)} images, {size}x{size} px, patch {model.patch_size}"
    if len(shown) < len(paths):
        note += f" (an evenly spaced subset of the {len(paths)} given)"
        log.warning(
            "explorer: %d images given, showing %d evenly spaced ones (caps: %d images, %.0f MB; "
            "raise --max-images / --max-megabytes to show more)",
            len(paths), len(shown), max_images, max_megabytes,
        )
    images = read_images(shown, model, size)
    data = explorer_data(model, images, [p.name for p in shown], note)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(data), encoding="utf-8")
    return out


def serve(path: str | Path, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server for the folder holding `path` (call serve_forever on it); port 0 picks a free port."""
    handler = partial(SimpleHTTPRequestHandler, directory=str(Path(path).resolve().parent))
    return ThreadingHTTPServer((host, port), handler)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _base64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _float16_base64(array: np.ndarray) -> str:
    return _base64(array.astype("<f2"))


def _png_base64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
