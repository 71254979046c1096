"""Feature-extraction throughput: dinolab's DINOv2 ViT-S/14 vs HF transformers' Dinov2Model, same weights.

Both networks get the same random weights (dinolab -> HF layout) and the same 224 px batches; dinolab's
model is built with HF's position-embedding resize so both compute the same function (their max abs
output difference is reported). Timed: forward passes under torch.no_grad, fp32 and bf16 autocast,
after one warm-up batch. Prints JSON. Run by hand:

    .venv/bin/python benchmarks/feature_extraction.py --threads 2
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
from harness import cpu_facts, time_calls


def throughput(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, iters: int, bf16: bool) -> float:
    """Images/s over `iters` forward passes after one warm-up, without autograd, in fp32 or bf16 autocast."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        timings = time_calls(lambda: forward(x), iters, warmup=1)
    return iters * x.shape[0] / sum(timings.wall_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from transformers import Dinov2Config, Dinov2Model

    from dinolab.hub import dinov2_vits14, from_dinolab

    ours = dinov2_vits14(interpolate_offset=0.0).eval()  # HF Dinov2Model's resize: by size, no antialias
    config = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518, patch_size=14)
    hf = Dinov2Model(config).eval()
    hf.load_state_dict(from_dinolab(ours.state_dict(), "hf"))

    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    with torch.no_grad():
        diff = (ours.forward_features(x)["x_norm_clstoken"] - hf(pixel_values=x).pooler_output).abs().max().item()

    def run_ours(batch: torch.Tensor) -> torch.Tensor:
        return ours(batch)

    def run_hf(batch: torch.Tensor) -> torch.Tensor:
        return hf(pixel_values=batch).pooler_output

    results = {}
    for precision, bf16 in (("fp32", False), ("bf16", True)):
        for name, forward in (("dinolab", run_ours), ("hf_transformers", run_hf)):
            results[f"{name}_{precision}_img_per_s"] = round(throughput(forward, x, args.iters, bf16), 2)
    print(json.dumps({
        "model": "dinov2_vits14 (random init)", "image_size": args.image_size, "batch_size": args.batch_size,
        "iters": args.iters, "threads": args.threads, "torch": torch.__version__,
        "cpu": cpu_facts(args.threads)["cpu_model"],
        "max_abs_diff_cls_fp32": diff, **results,
    }, indent=1))


if __name__ == "__main__":
    main()
