"""The HTML explorer: embedded data, size caps, serving, and the page itself in real headless Chromium."""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import make_fmnist_images, save_image
from test_viz_inputs import write_viz_checkpoint

from dinolab.viz.explorer import build_explorer, bytes_per_image, evenly_spaced, image_cap, serve
from dinolab.viz.inputs import VizModel

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
    "--no-first-run", "--disable-component-update", "--disable-sync",
]
DUPLICATE_OF = 3  # images/copy.png is images/garment_3.png again


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> VizModel:
    return VizModel.from_checkpoint(write_viz_checkpoint(tmp_path_factory.mktemp("explorer_ckpt")))


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("explorer_images")
    images, _ = make_fmnist_images(8, seed=3)
    paths = [save_image(root / f"garment_{i}.png", img) for i, img in enumerate(images)]
    return [*paths, save_image(root / "copy.png", images[DUPLICATE_OF])]


@pytest.fixture(scope="module")
def explorer_html(model: VizModel, image_paths: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_explorer(model, image_paths, tmp_path_factory.mktemp("explorer") / "explorer.html")


def embedded_data(html: str) -> dict:
    match = re.search(r'<script id="explorer-data" type="application/json">(.*?)</script>', html, re.S)
    assert match, "no embedded data block"
    return json.loads(match.group(1))


def test_page_is_self_contained(explorer_html: Path) -> None:
    html = explorer_html.read_text()
    assert not re.search(r"<script[^>]+src=|<link|https?://", html)  # no external script, style or URL
    data = embedded_data(html)
    n, patches, dim = 9, 16, 192
    assert data["names"] == [f"garment_{i}.png" for i in range(8)] + ["copy.png"]
    assert (data["grid"], data["image_size"], data["heads"], data["dim"]) == ([4, 4], [28, 28], 3, dim)
    features = np.frombuffer(base64.b64decode(data["patch_features"]), "<f2").reshape(n, patches, dim)
    np.testing.assert_allclose(np.linalg.norm(features.astype(np.float32), axis=-1), 1, atol=2e-3)
    cls = np.frombuffer(base64.b64decode(data["cls_features"]), "<f2").reshape(n, dim)
    np.testing.assert_array_equal(cls[DUPLICATE_OF], cls[8])
    attention = np.frombuffer(base64.b64decode(data["attention"]), np.uint8).reshape(n, 4, patches)
    assert (attention.max(axis=-1) == 255).all()  # every map scaled to its maximum
    assert len(base64.b64decode(data["pca_rgb"])) == n * patches * 3


def test_caps_subsample_evenly_with_a_message(
    model: VizModel, image_paths: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert evenly_spaced(list(range(10)), 4) == [0, 3, 6, 9]
    assert image_cap(model, 28, max_images=5) == 5
    per_image = bytes_per_image(model, 28)
    assert image_cap(model, 28, max_megabytes=3.5 * per_image / 2**20) == 3
    with caplog.at_level(logging.WARNING, logger="dinolab.viz.explorer"):
        out = build_explorer(model, image_paths, tmp_path / "small.html", max_images=3)
    assert "9 images given, showing 3 evenly spaced ones" in caplog.text
    data = embedded_data(out.read_text())
    assert data["names"] == ["garment_0.png", "garment_4.png", "copy.png"]
    assert out.stat().st_size < 3 * per_image + 60_000  # the estimate bounds the data; the rest is HTML/JS/CSS


def test_serve(explorer_html: Path) -> None:
    server = serve(explorer_html, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        with urllib.request.urlopen(f"http://{host}:{port}/{explorer_html.name}", timeout=10) as response:
            assert response.read() == explorer_html.read_bytes()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium (.ci/run installs it)"
)
def test_explorer_in_chromium(explorer_html: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = context.new_page()
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(explorer_html.as_uri())
            page.wait_for_selector("body[data-ready=true]", timeout=10_000)
            assert page.locator(".tile").count() == 9

            def overlay(i: int) -> str:
                return page.eval_on_selector(f"#overlay-{i}", "canvas => canvas.toDataURL()")

            untouched = overlay(0)
            page.hover(f"#overlay-{DUPLICATE_OF}", position={"x": 5, "y": 5})  # follows the mouse before any click
            assert page.get_attribute("body", "data-selected-index") == str(DUPLICATE_OF)
            page.click(f"#overlay-{DUPLICATE_OF}", position={"x": 60, "y": 60})  # 112 px tile, 28 px patches
            assert page.get_attribute("body", "data-selected-patch") == str(2 * 4 + 2)
            heat_a = overlay(0)
            page.click("#overlay-5", position={"x": 5, "y": 100})
            assert page.get_attribute("body", "data-selected-patch") == str(3 * 4 + 0)
            heat_b = overlay(0)
            assert len({untouched, heat_a, heat_b}) == 3  # each click repaints every tile's heat map
            page.hover("#overlay-1")  # pinned by the click: hovering changes nothing
            assert page.get_attribute("body", "data-selected-index") == "5"

            page.click(f"#overlay-{DUPLICATE_OF}")
            nearest = page.eval_on_selector_all("#neighbors li", "items => items.map(li => li.dataset.index)")
            assert nearest[0] == "8" and str(DUPLICATE_OF) not in nearest and len(nearest) == 8
            page.screenshot(path=str(tmp_path / "explorer_similarity.png"), full_page=True)

            page.select_option("#mode", "attention")
            mean_attention = overlay(0)
            page.select_option("#head", "0")
            assert overlay(0) != mean_attention
            page.select_option("#mode", "pca")
            assert overlay(0) not in (mean_attention, heat_b)
            page.select_option("#mode", "none")
            assert overlay(0) == untouched
            page.screenshot(path=str(tmp_path / "explorer_none.png"))
        finally:
            context.close()
    assert not errors, errors
    assert (tmp_path / "explorer_similarity.png").stat().st_size > 10_000
