"""Export: safetensors in the official layouts (CLI), ONNX with a dynamic batch and image size checked with
onnxruntime against PyTorch at several sizes, including ones that need the position embedding resized."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from dinolab.cli import main
from dinolab.hub import dino_vits16, dinov2_vits14_reg, load_backbone, save_backbone
from dinolab.hub.export import export_onnx, verify_onnx
from dinolab.hub.loading import NORMALIZATION_METADATA_KEY, read_file

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def small(constructor, **kwargs):
    model = constructor(depth=2, embed_dim=64, num_heads=2, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_cli_export_safetensors_layouts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = small(dinov2_vits14_reg, img_size=56)
    source = save_backbone(model, tmp_path / "source.safetensors")
    out = tmp_path / "model.safetensors"
    assert main(["export", "safetensors", "--checkpoint", str(source), "--out", str(out)]) == 0
    again = load_backbone(out)  # architecture from the metadata: 64 wide, 2 heads, registers, antialiased resize
    x = torch.randn(1, 3, 70, 42)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    hf = tmp_path / "hf.safetensors"
    assert main(["export", "safetensors", "--checkpoint", str(out), "--out", str(hf), "--layout", "hf"]) == 0
    state, metadata = read_file(hf)
    assert "encoder.layer.0.attention.q_proj.weight" in state and metadata["layout"] == "hf"
    torch.testing.assert_close(load_backbone(hf)(x), model(x), rtol=0, atol=0)


def onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def test_cli_export_onnx_dino_layout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """DINO's resize (scale factor (grid + 0.1) / side) in the graph; at the traced size, 64 px, no resize. The
    normalization the source file records travels into the ONNX file's metadata."""
    normalization = ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    source = save_backbone(small(dino_vits16, img_size=64), tmp_path / "dino.safetensors", normalization=normalization)
    out = tmp_path / "dino.onnx"
    assert main(["export", "onnx", "--checkpoint", str(source), "--out", str(out), "--image-size", "64"]) == 0
    printed = capsys.readouterr().out
    diffs = [float(d) for d in re.findall(r"max abs diff (\S+)", printed)]
    assert len(diffs) == 2 and max(diffs) <= 1e-4, printed
    assert "2x3x64x64" in printed and "1x3x96x16" in printed  # 6 x 1 patches: one-patch-wide works too
    assert "normalization mean [0.1, 0.2, 0.3] std [0.4, 0.5, 0.6]" in printed
    recorded = json.loads(onnx_metadata(out)[NORMALIZATION_METADATA_KEY])
    assert recorded == {"mean": list(normalization[0]), "std": list(normalization[1])}


def test_onnx_dynamic_sizes_dinov2_registers(tmp_path: Path) -> None:
    model = small(dinov2_vits14_reg, img_size=56)
    path = export_onnx(model, tmp_path / "reg.onnx", image_size=56)
    diffs = verify_onnx(model, path, [(2, 56, 56), (1, 98, 42), (3, 28, 28)])
    assert set(diffs) == {"2x3x56x56", "1x3x98x42", "3x3x28x28"}
    assert max(diffs.values()) <= 1e-4, diffs
    assert NORMALIZATION_METADATA_KEY not in onnx_metadata(path)  # none given, none claimed


def test_onnx_normalization_must_fit_the_channels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3-channel images"):
        export_onnx(small(dino_vits16, img_size=64), tmp_path / "x.onnx", image_size=64, normalization=([0.5], [0.2]))
    assert not (tmp_path / "x.onnx").exists()


def test_onnx_needs_a_patch_multiple(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        export_onnx(small(dino_vits16, img_size=64), tmp_path / "x.onnx", image_size=60)


def test_missing_export_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else find_spec(name))
    with pytest.raises(ImportError, match=r"pip install 'dinolab\[export\]'"):
        export_onnx(small(dino_vits16, img_size=64), tmp_path / "x.onnx", image_size=64)
