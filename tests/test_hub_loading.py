"""Loading the official checkpoint formats (synthetic files written with the official key names and
shapes), dinolab's own checkpoints, saving in the official DINOv2 layout, and bad input."""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dinolab.hub import load_backbone, load_model, load_weights, save_backbone
from dinolab.hub.loading import read_file
from dinolab.io import CheckpointError
from dinolab.models.vit import VisionTransformer

DIM, DEPTH, HEADS = 64, 2, 2  # 64 wide: pass num_heads, the width is not one of the DINO family's


def official_vit_state(
    patch: int = 16, grid: int = 4, registers: int = 0, layerscale: str | None = None, swiglu: bool = False,
    mask_token: bool = True, chunked: bool = False,
) -> dict[str, torch.Tensor]:
    """Random tensors under the official names: DINO / iBOT / DINOv2 `vision_transformer.py`.
    layerscale: None, 'dinov2' (blocks.N.ls1.gamma) or 'ibot' (blocks.N.gamma_1); chunked: DINOv2's
    block chunks (blocks.0.N.*); swiglu: DINOv2's fused SwiGLU (w12 / w3, hidden 2/3 * 4D rounded up to 8)."""
    g = torch.Generator().manual_seed(1)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.1

    state = {
        "cls_token": rand(1, 1, DIM),
        "pos_embed": rand(1, 1 + grid * grid, DIM),
        "patch_embed.proj.weight": rand(DIM, 3, patch, patch),
        "patch_embed.proj.bias": rand(DIM),
        "norm.weight": 1 + rand(DIM),
        "norm.bias": rand(DIM),
    }
    if mask_token:
        state["mask_token"] = rand(1, DIM)
    if registers:
        state["register_tokens"] = rand(1, registers, DIM)
    hidden = (int(4 * DIM * 2 / 3) + 7) // 8 * 8
    for i in range(DEPTH):
        b = f"blocks.0.{i}." if chunked else f"blocks.{i}."
        state |= {
            b + "norm1.weight": 1 + rand(DIM), b + "norm1.bias": rand(DIM),
            b + "attn.qkv.weight": rand(3 * DIM, DIM), b + "attn.qkv.bias": rand(3 * DIM),
            b + "attn.proj.weight": rand(DIM, DIM), b + "attn.proj.bias": rand(DIM),
            b + "norm2.weight": 1 + rand(DIM), b + "norm2.bias": rand(DIM),
        }
        if swiglu:
            state |= {b + "mlp.w12.weight": rand(2 * hidden, DIM), b + "mlp.w12.bias": rand(2 * hidden),
                      b + "mlp.w3.weight": rand(DIM, hidden), b + "mlp.w3.bias": rand(DIM)}
        else:
            state |= {b + "mlp.fc1.weight": rand(4 * DIM, DIM), b + "mlp.fc1.bias": rand(4 * DIM),
                      b + "mlp.fc2.weight": rand(DIM, 4 * DIM), b + "mlp.fc2.bias": rand(DIM)}
        if layerscale == "dinov2":
            state |= {b + "ls1.gamma": rand(DIM), b + "ls2.gamma": rand(DIM)}
        elif layerscale == "ibot":
            state |= {b + "gamma_1": rand(DIM), b + "gamma_2": rand(DIM)}
    return state


def dino_head_state(prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}mlp.0.weight": torch.randn(32, DIM), f"{prefix}mlp.0.bias": torch.randn(32),
            f"{prefix}last_layer.weight_g": torch.ones(100, 1), f"{prefix}last_layer.weight_v": torch.randn(100, 32)}


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def assert_loaded(model: VisionTransformer, official: dict[str, torch.Tensor], renames: dict[str, str]) -> None:
    """Every official tensor landed, unchanged, in the parameter its name maps to."""
    ours = model.state_dict()
    for key, value in official.items():
        assert torch.equal(ours[renames.get(key, key)], value), key


def save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_dino_backbone_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """dino_deitsmall16_pretrain.pth: the bare backbone state dict, no mask token."""
    official = official_vit_state(mask_token=False)
    with caplog.at_level("INFO"):
        model = load_backbone(save(official, tmp_path / "dino.pth"), num_heads=HEADS)
    assert_loaded(model, official, {})
    assert (model.patch_size, len(model.blocks), model.num_register_tokens) == (16, DEPTH, 0)
    assert (model.interpolate_offset, model.interpolate_antialias) == (0.1, False)  # DINO's resize
    assert "left at init: mask_token" in caplog.text
    assert torch.equal(model.mask_token, torch.zeros(1, DIM))


def test_dino_full_training_checkpoint(tmp_path: Path) -> None:
    """DINO's *_full_checkpoint.pth: student (DDP: module.backbone.*) and teacher (backbone.*) with heads,
    optimizer, epoch, loss center and the argparse Namespace of the run."""
    teacher, student = official_vit_state(mask_token=False), official_vit_state(mask_token=False)
    student = {k: v + 1 for k, v in student.items()}
    path = save({
        "student": prefixed(student, "module.backbone.") | dino_head_state("module.head."),
        "teacher": prefixed(teacher, "backbone.") | dino_head_state("head."),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=65536, lr=0.0005),
        "dino_loss": {"center": torch.zeros(1, 100)},
    }, tmp_path / "dino_full.pth")
    assert_loaded(load_backbone(path, num_heads=HEADS), teacher, {})  # the teacher by default
    assert_loaded(load_backbone(path, entry="student", num_heads=HEADS), student, {})


@pytest.mark.parametrize("layerscale", [None, "ibot"])
def test_ibot_checkpoints(tmp_path: Path, layerscale: str | None) -> None:
    """iBOT's checkpoint_teacher.pth ({'state_dict': backbone}) and full checkpoints, whose student has
    `masked_embed`; iBOT's optional LayerScale is `blocks.N.gamma_1/2`."""
    official = official_vit_state(mask_token=False, layerscale=layerscale)
    renames = {f"blocks.{i}.gamma_{j}": f"blocks.{i}.ls{j}.gamma" for i in range(DEPTH) for j in (1, 2)}
    model = load_backbone(save({"state_dict": official}, tmp_path / "checkpoint_teacher.pth"), num_heads=HEADS)
    assert_loaded(model, official, renames)

    student = official | {"masked_embed": torch.randn(1, DIM)}
    full = {"student": prefixed(student, "module.backbone.") | dino_head_state("module.head."),
            "teacher": prefixed(official, "backbone.") | dino_head_state("head."), "epoch": 800,
            "args": argparse.Namespace(arch="vit_small")}
    model = load_backbone(save(full, tmp_path / "checkpoint.pth"), entry="student", num_heads=HEADS)
    assert_loaded(model, student, renames | {"masked_embed": "mask_token"})


def test_ibot_extras_are_reported(tmp_path: Path) -> None:
    """Parts of iBOT variants dinolab does not have (mean-pooling fc_norm, relative position bias) are named."""
    state = official_vit_state(mask_token=False) | {
        "fc_norm.weight": torch.ones(DIM), "blocks.0.attn.relative_position_bias_table": torch.zeros(49, HEADS)}
    with pytest.raises(CheckpointError, match=r"unexpected keys: blocks.0.attn.relative_position_bias_table, fc_norm"):
        load_backbone(save({"state_dict": state}, tmp_path / "ibot_extra.pth"), num_heads=HEADS)


@pytest.mark.parametrize(("registers", "swiglu", "chunked"), [(0, False, False), (4, False, False), (0, True, True)])
def test_dinov2_pretrain_file(tmp_path: Path, registers: int, swiglu: bool, chunked: bool) -> None:
    """dinov2_*_pretrain.pth: LayerScale, mask_token (1, D), registers, SwiGLU w12/w3, block chunks."""
    official = official_vit_state(patch=14, registers=registers, layerscale="dinov2", swiglu=swiglu, chunked=chunked)
    model = load_backbone(save(official, tmp_path / "dinov2_pretrain.pth"), num_heads=HEADS)
    assert_loaded(model, official, {k: k.replace("blocks.0.", "blocks.", 1) for k in official} if chunked else {})
    assert model.num_register_tokens == registers
    assert type(model.blocks[0].mlp).__name__ == ("SwiGLU" if swiglu else "Mlp")
    # DINOv2 resizes like DINO; its register models resize to the target size with antialiasing
    assert (model.interpolate_offset, model.interpolate_antialias) == ((0.0, True) if registers else (0.1, False))
    assert model(torch.randn(1, 3, 70, 42)).shape == (1, DIM)


def test_dinov2_training_checkpoint(tmp_path: Path) -> None:
    """DINOv2's teacher_checkpoint.pth: {'teacher': backbone.* (chunked) + dino_head.* + ibot_head.*}, and
    the trainer's {'model': teacher.backbone.* / student.backbone.*}."""
    official = official_vit_state(patch=14, layerscale="dinov2", chunked=True)
    renames = {k: k.replace("blocks.0.", "blocks.", 1) for k in official}
    teacher = prefixed(official, "backbone.") | dino_head_state("dino_head.") | dino_head_state("ibot_head.")
    assert_loaded(load_backbone(save({"teacher": teacher}, tmp_path / "t.pth"), num_heads=HEADS), official, renames)
    student = prefixed({k: v * 2 for k, v in official.items()}, "student.backbone.")
    both = {"model": prefixed(teacher, "teacher.") | student, "iteration": 10}
    assert_loaded(load_backbone(save(both, tmp_path / "model.pth"), num_heads=HEADS), official, renames)


def test_hub_constructor_loads_an_official_file(tmp_path: Path) -> None:
    from dinolab.hub import dinov2_vits14_reg

    official = official_vit_state(patch=14, registers=4, layerscale="dinov2")
    path = save(official, tmp_path / "reg.pth")
    model = dinov2_vits14_reg(weights=path, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, img_size=56)
    assert_loaded(model, official, {})
    assert not model.training


def test_dinolab_run_dir_and_checkpoint(trained_run: Path) -> None:
    from dinolab.io import read_training_checkpoint
    from dinolab.models.build import build_backbone

    checkpoint = read_training_checkpoint(trained_run)
    expected = build_backbone(checkpoint.config, drop_path_rate=0.0).eval()
    expected.load_state_dict(checkpoint.backbone_weights())
    x = torch.randn(2, expected.in_chans, 28, 28)
    for source in (trained_run, trained_run / "checkpoint.pth"):
        model = load_backbone(source)
        torch.testing.assert_close(model(x), expected(x), rtol=0, atol=0)
        assert not model.training


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_save_in_the_official_dinov2_layout_round_trip(tmp_path: Path, suffix: str) -> None:
    official = official_vit_state(patch=14, registers=4, layerscale="dinov2")
    model = load_backbone(save(official, tmp_path / "in.pth"), num_heads=HEADS)
    path = save_backbone(model, tmp_path / f"out{suffix}", layout="dinov2")
    saved, metadata = read_file(path)
    assert set(saved) == set(official)  # exactly the official names
    assert all(torch.equal(saved[k], official[k]) for k in official)
    again = load_backbone(path, num_heads=HEADS)
    assert (again.interpolate_offset, again.interpolate_antialias) == (0.0, True)
    x = torch.randn(1, 3, 42, 56)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    if suffix == ".safetensors":
        assert "dinolab_vit" in metadata  # the architecture travels with the weights


def test_safetensors_records_the_normalization_and_load_model_reads_it(tmp_path: Path) -> None:
    model = VisionTransformer(img_size=28, patch_size=7, in_chans=1, embed_dim=DIM, depth=1, num_heads=HEADS)
    path = save_backbone(model, tmp_path / "gray.safetensors", normalization=([0.286], [0.353]))
    loaded = load_model(path)
    assert (loaded.config.data.mean, loaded.config.data.std) == ((0.286,), (0.353,))
    assert loaded.normalization_known and not loaded.trained_here
    unrecorded = load_model(save_backbone(model, tmp_path / "gray.pth", normalization=([0.286], [0.353])),
                            num_heads=HEADS)
    assert (unrecorded.config.data.mean, unrecorded.normalization_known) == ((0.5,), False)  # .pth: no metadata
    with pytest.raises(ValueError, match="1-channel images, so give 1 mean"):
        save_backbone(model, tmp_path / "bad.safetensors", normalization=([0.5, 0.5, 0.5], [0.2, 0.2, 0.2]))


def test_save_in_the_dino_layout_refuses_dinov2_parts(tmp_path: Path) -> None:
    model = VisionTransformer(embed_dim=DIM, depth=1, num_heads=HEADS, layerscale_init=1e-5)
    with pytest.raises(ValueError, match="DINO layout has no LayerScale"):
        save_backbone(model, tmp_path / "x.pth", layout="dino")
    plain = VisionTransformer(img_size=64, embed_dim=DIM, depth=1, num_heads=HEADS)
    saved, _ = read_file(save_backbone(plain, tmp_path / "dino.pth", layout="dino"))
    assert "mask_token" not in saved and "cls_token" in saved


def test_url_goes_through_the_torch_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    official = official_vit_state(mask_token=False)
    local = save(official, tmp_path / "src.pth")
    calls = []

    def fake_download(url: str, dst: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        Path(dst).write_bytes(local.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = "https://example.invalid/dino/dino_deitsmall16_pretrain.pth"
    for _ in range(2):
        assert_loaded(load_backbone(url, num_heads=HEADS), official, {})
    assert calls == [url]  # downloaded once, then read from the cache
    assert (tmp_path / "hub" / "checkpoints" / "dino_deitsmall16_pretrain.pth").is_file()


def test_resnet50_from_a_dino_full_checkpoint(tmp_path: Path) -> None:
    from dinolab.hub import dino_resnet50

    reference = dino_resnet50()
    state = prefixed(reference.state_dict(), "module.backbone.") | dino_head_state("module.head.")
    model = dino_resnet50(weights=save({"teacher": state}, tmp_path / "rn50.pth"))
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError, match="ResNet-50"):
        load_backbone(tmp_path / "rn50.pth")


# ------------------------------------------------------------------------------------------ bad input


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone(tmp_path / "nope.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"w{suffix}"
    state = official_vit_state(patch=14, layerscale="dinov2")
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_backbone(path, num_heads=HEADS)


class RunsCode:
    def __reduce__(self):  # unpickling would call os.system
        return (os.system, ("echo pwned",))


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": official_vit_state(), "x": RunsCode()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_backbone(path, num_heads=HEADS)


def test_checkpoint_of_another_architecture(tmp_path: Path) -> None:
    """A ViT-S/16 DINO file into a DINOv2 ViT-S/14 (LayerScale, 37x37 grid, 14 px patches): every difference named."""
    path = save(official_vit_state(mask_token=False), tmp_path / "dino.pth")
    with pytest.raises(CheckpointError) as err:
        load_backbone(path, arch="dinov2_vits14", embed_dim=DIM, depth=DEPTH, num_heads=HEADS)
    message = str(err.value)
    assert "missing keys: blocks.0.ls1.gamma" in message
    assert "patch_embed.proj.weight: checkpoint (64, 3, 16, 16) vs model (64, 3, 14, 14)" in message
    assert "pos_embed: checkpoint (1, 17, 64) vs model (1, 1370, 64)" in message


def test_not_a_dict_of_weights(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a dict of tensors"):
        load_backbone(save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth"))
    with pytest.raises(CheckpointError, match="no 'ema' entry"):
        model = VisionTransformer(embed_dim=DIM, depth=1, num_heads=HEADS)
        load_weights(model, save({"teacher": {}}, tmp_path / "t.pth"), entry="ema")


def test_load_model_gives_the_input_config(tmp_path: Path, trained_run: Path) -> None:
    """Evaluation and visualization load through load_model: a dinolab run brings its training config
    (normalization, crop size); released weights get ImageNet normalization at 224 px and their patch size."""
    from dinolab.hub import load_model
    from dinolab.io import read_checkpoint

    ours = load_model(trained_run)
    saved = read_checkpoint(trained_run / "checkpoint.pth")["config"]
    assert ours.trained_here and ours.config.to_dict() == saved
    official = official_vit_state(patch=14, layerscale="dinov2")
    released = load_model(save(official, tmp_path / "dinov2_pretrain.pth"), num_heads=HEADS)
    assert not released.trained_here
    assert (released.config.model.patch_size, released.config.model.in_chans) == (14, 3)
    assert released.config.data.mean == (0.485, 0.456, 0.406) and released.config.data.global_crops_size == 224
    assert_loaded(released.backbone, official, {})


@pytest.mark.parametrize("with_metadata", [True, False])
def test_conv_stem_backbone_round_trip(tmp_path: Path, with_metadata: bool) -> None:
    """A ViT with a convolutional stem reloads with its stem: from a dinolab export (architecture in the
    metadata) and from a bare state dict (stem widths and image channels read from the weights)."""
    model = VisionTransformer(img_size=28, patch_size=7, in_chans=1, embed_dim=DIM, depth=1, num_heads=HEADS,
                              conv_stem=(4, 6)).eval()
    if with_metadata:
        path = save_backbone(model, tmp_path / "stem.safetensors")
    else:
        path = save(model.state_dict(), tmp_path / "stem.pth")
    again = load_backbone(path, num_heads=HEADS)
    assert again.conv_stem == (4, 6) and again.in_chans == 1
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
