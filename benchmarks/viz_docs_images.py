"""Regenerate the README's pictures (docs/images/) from a checkpoint and Fashion-MNIST test images.

Writes attention.png (4 garments: image, per-head [CLS] attention, mean, 60%-mass masks), pca.png (PCA over
one test image of each class), and explorer.png (a screenshot of the explorer over the first 200 test
images after clicking a patch, taken in headless Chromium). Prints the files and their sizes as JSON.

Usage:
  python benchmarks/viz_docs_images.py --checkpoint /work/runs/dino_demo/checkpoint.pth
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dinolab.data.datasets import FMNIST_CLASSES, FashionMNIST
from dinolab.viz.attention import write_attention_figures
from dinolab.viz.explorer import build_explorer
from dinolab.viz.inputs import VizModel
from dinolab.viz.pca import write_pca_figures

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
    "--no-first-run", "--disable-component-update", "--disable-sync",
]


def write_pngs(images: np.ndarray, names: list[str], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png" for name in names]
    for image, path in zip(images, paths, strict=True):
        Image.fromarray(image[0]).save(path)
    return paths


def stack_vertically(paths: list[Path], out: Path) -> Path:
    pictures = [Image.open(p).convert("RGB") for p in paths]
    canvas = Image.new("RGB", (max(p.width for p in pictures), sum(p.height for p in pictures)), "white")
    top = 0
    for picture in pictures:
        canvas.paste(picture, (0, top))
        top += picture.height
    canvas.save(out, optimize=True)
    return out


def screenshot(html: Path, out: Path, chromium: str) -> Path:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1100, "height": 640},
        )
        page = context.new_page()
        page.goto(html.as_uri())
        page.wait_for_selector("body[data-ready=true]")
        page.click("#overlay-0", position={"x": 70, "y": 70})  # a patch on the first garment (an ankle boot)
        page.screenshot(path=str(out))
        context.close()
    Image.open(out).convert("RGB").quantize(colors=128).save(out, optimize=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", default="docs/images")
    parser.add_argument("--fmnist-dir", default=None)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = VizModel.from_checkpoint(args.checkpoint)
    test = FashionMNIST(args.fmnist_dir, split="test")
    first_of_class = [int((test.labels == c).nonzero()[0]) for c in range(len(FMNIST_CLASSES))]
    names = [f"{i}_{FMNIST_CLASSES[test.labels[i]].replace('/', '-').replace(' ', '-')}" for i in range(200)]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_pngs(test.images[:200].numpy(), names, tmp / "images")
        per_class = [paths[i] for i in first_of_class]
        garments = [per_class[c] for c in (0, 1, 7, 8)]  # T-shirt, trouser, sneaker, bag
        attention = stack_vertically(write_attention_figures(model, garments, tmp / "attention"), out / "attention.png")
        pca_grid = write_pca_figures(model, per_class, tmp / "pca")[-1]
        Image.open(pca_grid).convert("RGB").save(out / "pca.png", optimize=True)
        html = build_explorer(model, paths, tmp / "explorer.html")
        shot = screenshot(html, out / "explorer.png", args.chromium)
    print(json.dumps({p.name: p.stat().st_size for p in (attention, out / "pca.png", shot)}, indent=1))


if __name__ == "__main__":
    main()
