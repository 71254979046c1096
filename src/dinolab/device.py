"""Device and precision, chosen once per run and passed down."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """True where the CPU has native bf16 matmul (AVX512-BF16 or AMX), so bf16 autocast pays off."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision])


def resolve(device: str = "auto", precision: str = "auto") -> Runtime:
    """`auto` device: CUDA if present, else CPU. `auto` precision: bf16 where fast, fp16 on old GPUs, else fp32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for but CUDA is not available; use train.device=cpu or auto")
    if precision == "auto":
        if dev.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_has_fast_bf16() else "fp32"
    if dev.type == "cuda":  # fp32 matmuls (the parts autocast leaves in fp32) on tensor cores, as DINOv2 does
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError("fp16 autocast is only supported on CUDA here; use precision=bf16 or fp32 on CPU")
    return Runtime(dev, precision)
