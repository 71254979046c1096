"""Does packing the multi-crop forward into one sequence pay? (#12: "DINOv2 packs global and local crops into one
sequence; do it with PyTorch's own nested/jagged tensors or a block mask if it pays, and measure".)

dinolab's student forward today makes one backbone call per crop resolution (`MultiCropWrapper`): the 2 global
crops of the batch together, then all local crops together. Packing puts each image's 2 + N crops into one token
sequence and keeps the crops apart with a block-diagonal attention mask, so the backbone runs once. Variants, each
a student forward + backward in bf16 autocast on the same crops and weights:

- `grouped`: dinolab's forward (one call per resolution);
- `packed_mask`: one call over the packed sequences, attention under a block-diagonal boolean mask (dense: the
  masked-out pairs are still computed);
- `packed_jagged`: one call over a jagged nested tensor of all crops (`torch.nested`, layout=torch.jagged), no
  padding and no mask; on CPU its attention may be unsupported, which the JSON then records as the variant's error.

It checks that the packed forward gives the grouped one's [CLS] outputs (fp32) and prints one JSON object: per
variant the best / median step time, img/s, achieved GFLOP/s (FLOPs counted once with torch's FlopCounterMode on
the grouped step) and model FLOP utilization against the bf16 2048^2 matmul peak measured in the same run.

Usage: .venv/bin/python benchmarks/packed_multicrop.py [--arch vit_small --batch 2 --repeats 5] > packed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from harness import cpu_facts, loadavg, log, matmul_peak, time_calls
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from dinolab.models.layers import Block, _explicit_is_faster
from dinolab.models.vit import VisionTransformer, vit_small, vit_tiny

ARCHS = {"vit_tiny": vit_tiny, "vit_small": vit_small}


def attend(blk: Block, x: Tensor, mask: Tensor | None) -> Tensor:
    """`blk.forward` with an attention mask (True = may attend); also on jagged nested tensors (no reshape of
    the ragged dimension: unflatten / select / transpose only)."""
    a = blk.attn
    qkv = a.qkv(blk.norm1(x)).unflatten(-1, (3, a.num_heads, x.shape[-1] // a.num_heads))
    q, k, v = (qkv.select(-3, i).transpose(1, 2) for i in range(3))  # (B, heads, tokens, head dim)
    if not q.is_nested and _explicit_is_faster(q):  # as dinolab's Attention does on CPU in bf16
        scores = (q * a.scale) @ k.transpose(-2, -1)
        out = (scores.masked_fill(~mask, float("-inf")) if mask is not None else scores).softmax(-1) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = out.transpose(1, 2).flatten(-2)
    x = x + blk.drop_path(blk.ls1(a.proj(out)))
    return x + blk.drop_path(blk.ls2(blk.mlp(blk.norm2(x))))


def grouped(vit: VisionTransformer, global_crops: Tensor, local_crops: Tensor) -> Tensor:
    """[CLS] of every crop, one backbone call per resolution (what MultiCropWrapper does)."""
    return torch.cat([vit(global_crops), vit(local_crops)])


def packed_mask(vit: VisionTransformer, global_crops: Tensor, local_crops: Tensor) -> Tensor:
    """One call: each image's crops concatenated into one sequence, crops kept apart by a block-diagonal mask."""
    b = global_crops.shape[0] // 2
    g, loc = vit.prepare_tokens(global_crops), vit.prepare_tokens(local_crops)  # (2B, Lg, D), (nB, Ll, D)
    n_local, lg, ll, d = loc.shape[0] // b, g.shape[1], loc.shape[1], g.shape[2]
    # crops are stacked view by view (view 0 of every image, then view 1, ...): regroup them by image
    per_image = torch.cat([g.view(2, b, lg, d).transpose(0, 1).reshape(b, 2 * lg, d),
                           loc.view(n_local, b, ll, d).transpose(0, 1).reshape(b, n_local * ll, d)], dim=1)
    lengths = [lg] * 2 + [ll] * n_local
    segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    mask = segment[:, None] == segment[None, :]
    x = per_image
    for blk in vit.blocks:
        x = attend(blk, x, mask)
    starts = torch.tensor([0, *lengths[:-1]]).cumsum(0)
    cls = vit.norm(x[:, starts])  # (B, crops, D)
    return torch.cat([cls[:, :2].transpose(0, 1).reshape(2 * b, d), cls[:, 2:].transpose(0, 1).reshape(-1, d)])


def packed_jagged(vit: VisionTransformer, global_crops: Tensor, local_crops: Tensor) -> Tensor:
    """One call over a jagged nested tensor of every crop's token sequence: no padding, no mask."""
    tokens = [*vit.prepare_tokens(global_crops).unbind(), *vit.prepare_tokens(local_crops).unbind()]
    x = torch.nested.as_nested_tensor(tokens, layout=torch.jagged)
    for blk in vit.blocks:
        x = attend(blk, x, None)
    return vit.norm(torch.stack([t[0] for t in x.unbind()]))


VARIANTS: dict[str, Callable[[VisionTransformer, Tensor, Tensor], Tensor]] = {
    "grouped": grouped, "packed_mask": packed_mask, "packed_jagged": packed_jagged,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="vit_small")
    parser.add_argument("--batch", type=int, default=2, help="images per step (each: 2 global + --local crops)")
    parser.add_argument("--local", type=int, default=10, help="local crops per image (DINO: 10, DINOv2: 8)")
    parser.add_argument("--global-size", type=int, default=224)
    parser.add_argument("--local-size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result: dict = {"benchmark": "packed_multicrop", "args": vars(args), "machine": cpu_facts(args.threads),
                    "loadavg_start": loadavg(), "matmul_peak": matmul_peak(2048, 20)}
    vit = ARCHS[args.arch](patch_size=16, img_size=224, drop_path_rate=0.0)
    b = args.batch
    global_crops = torch.randn(2 * b, 3, args.global_size, args.global_size)
    local_crops = torch.randn(args.local * b, 3, args.local_size, args.local_size)

    with torch.no_grad():  # the packed forwards compute what the grouped one does
        reference = grouped(vit, global_crops, local_crops)
        result["max_abs_diff_vs_grouped_fp32"] = {
            "packed_mask": float((packed_mask(vit, global_crops, local_crops) - reference).abs().max())}

    def step(forward: Callable) -> Callable[[], float]:
        def run() -> float:
            vit.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = forward(vit, global_crops, local_crops)
            loss = out.float().square().mean()
            loss.backward()
            return loss.item()
        return run

    with FlopCounterMode(display=False) as counter:
        step(grouped)()
    flops = counter.get_total_flops()
    result["step_gflop_grouped"] = round(flops / 1e9, 2)
    peak = result["matmul_peak"]["bf16_gflops"]
    variants = {}
    for name, forward in VARIANTS.items():
        log(f"--- {name}")
        try:
            timings = time_calls(step(forward), args.repeats, warmup=1, label=name)
        except (RuntimeError, NotImplementedError, ValueError, torch.AcceleratorError) as err:
            variants[name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
            log(f"{name} failed: {variants[name]['error']}")
            continue
        best, median = min(timings.wall_s), statistics.median(timings.wall_s)
        variants[name] = {"best_step_s": round(best, 4), "median_step_s": round(median, 4),
                          "img_per_s": round(b / best, 3), "achieved_gflops": round(flops / best / 1e9, 1),
                          "mfu_vs_bf16_peak": round(flops / best / 1e9 / peak, 3)}
    base = variants["grouped"].get("best_step_s")
    for v in variants.values():
        if "best_step_s" in v and base:
            v["speedup_vs_grouped"] = round(base / v["best_step_s"], 3)
    result["variants"] = variants
    result["notes"] = ("achieved GFLOP/s and MFU use the grouped step's FLOPs for every variant (the useful work); "
                       "the masked variant also computes the masked-out attention pairs")
    result["loadavg_end"] = loadavg()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
