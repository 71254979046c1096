"""Export a backbone to ONNX (dynamic batch and image size) and check the graph against PyTorch.

The graph takes `pixel_values` (B, C, H, W), H and W multiples of the patch size, and returns `cls`
(B, D), the normalized [CLS] token, and `patch_tokens` (B, H/p * W/p, D), the normalized patch tokens.
The position-embedding interpolation is part of the graph, so one file serves every image size. Given the input
normalization the weights were trained with, the file records it in its metadata (`metadata_props`, key
`dinolab_normalization`, JSON {"mean": [...], "std": [...]}), as safetensors exports do.
Uses torch's dynamo-based exporter (`torch.onnx.export(..., dynamo=True)` with `dynamic_shapes`).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from dinolab.hub.loading import NORMALIZATION_METADATA_KEY, Normalization, normalization_json
from dinolab.models.vit import VisionTransformer

INPUT_NAME = "pixel_values"
OUTPUT_NAMES = ("cls", "patch_tokens")


class MissingExtraError(ImportError):
    """An optional dependency group is not installed; the message names the pip command."""


def require_export_extra(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(
            f"{', '.join(missing)} not installed; this needs the export extra: pip install 'dinolab[export]'"
        )


class _Tokens(nn.Module):
    def __init__(self, backbone: VisionTransformer):
        super().__init__()
        self.backbone = backbone

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        out = self.backbone.forward_features(pixel_values)
        return out["x_norm_clstoken"], out["x_norm_patchtokens"]


def export_onnx(
    model: VisionTransformer,
    path: str | Path,
    image_size: int = 224,
    opset: int = 18,
    normalization: Normalization | None = None,
) -> Path:
    """Write `model` as ONNX with a dynamic batch and a dynamic height and width (multiples of the patch size).

    `image_size` is only the size of the example input used to trace the graph. `normalization` (mean, std), when
    given, is recorded in the file's metadata so a consumer knows how to prepare `pixel_values`.
    """
    require_export_extra("onnx", "onnxscript")
    recorded = None if normalization is None else normalization_json(model, normalization)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    p = model.patch_size
    if image_size % p:
        raise ValueError(f"image_size {image_size} is not a multiple of the patch size {p}")
    example = torch.randn(2, model.in_chans, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    rows, cols = torch.export.Dim("patch_rows", min=1, max=1024), torch.export.Dim("patch_cols", min=1, max=1024)
    dynamic = {INPUT_NAME: {0: batch, 2: p * rows, 3: p * cols}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
        program = torch.onnx.export(
            _Tokens(model.eval()), (example,), dynamo=True, dynamic_shapes=dynamic, input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES), opset_version=opset, verbose=False,
        )
    if recorded is not None:
        program.model.metadata_props[NORMALIZATION_METADATA_KEY] = recorded
    program.save(str(path))
    return path


def verify_onnx(model: VisionTransformer, path: str | Path, sizes: list[tuple[int, int, int]]) -> dict[str, float]:
    """Max abs difference between onnxruntime and PyTorch (both outputs) for inputs of each (B, H, W)."""
    require_export_extra("onnxruntime")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = {}
    model = model.eval()
    for b, h, w in sizes:
        x = torch.randn(b, model.in_chans, h, w)
        with torch.no_grad():
            expected = _Tokens(model)(x)
        got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})
        diffs[f"{b}x{model.in_chans}x{h}x{w}"] = max(
            float((torch.from_numpy(g) - e).abs().max()) for g, e in zip(got, expected, strict=True)
        )
    return diffs
