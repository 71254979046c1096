"""Device and precision resolution."""

from __future__ import annotations

import contextlib

import pytest
import torch

from dinolab.device import Runtime, cpu_has_fast_bf16, resolve


def test_cpu_fp32() -> None:
    rt = resolve("cpu", "fp32")
    assert rt == Runtime(torch.device("cpu"), "fp32")
    assert isinstance(rt.autocast(), contextlib.nullcontext)


def test_auto_precision_on_cpu_follows_the_hardware() -> None:
    rt = resolve("cpu", "auto")
    assert rt.precision == ("bf16" if cpu_has_fast_bf16() else "fp32")


def test_bf16_autocast_on_cpu() -> None:
    rt = resolve("cpu", "bf16")
    with rt.autocast():
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16


def test_fp16_needs_cuda() -> None:
    with pytest.raises(ValueError, match="only supported on CUDA"):
        resolve("cpu", "fp16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is missing")
def test_cuda_requested_without_cuda() -> None:
    with pytest.raises(RuntimeError, match="train.device=cpu"):
        resolve("cuda", "auto")
    assert resolve("auto", "fp32").device.type == "cpu"
