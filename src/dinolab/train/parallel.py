"""How the student (and its EMA teacher) are spread over the processes, and how their state is saved.

- `ddp`: each rank holds the whole model; DDP averages the gradients. Small and medium models.
- `fsdp`: FSDP2's `fully_shard` on every block, then on the whole model, for student and teacher alike:
  parameters, gradients and optimizer state are sharded (each rank holds 1/world of them) and gathered
  block by block for the forward and backward. On CUDA with bf16, parameters are gathered in bf16 and
  gradients reduced in fp32 (`MixedPrecisionPolicy`). The EMA update works shard by shard; DINO's
  per-parameter gradient clip takes each parameter's full norm across the shards.

Checkpoints keep one format whatever the parallelism: full (unsharded) state dicts, the optimizer's indexed
by position as `torch.optim` does, written by rank 0. So a run saved with FSDP resumes with DDP, on one
process or another number of processes, and the other way round.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from dinolab.device import Runtime
from dinolab.distributed import World
from dinolab.models.heads import MultiCropWrapper


def distribute(
    student: MultiCropWrapper, teacher: MultiCropWrapper, mode: str, world: World, runtime: Runtime
) -> nn.Module:
    """Shard or wrap the models for `mode` (none | ddp | fsdp); returns the module to call for the student's
    forward (the DDP wrapper, or the student itself)."""
    if mode == "fsdp":
        for model in (student, teacher):
            shard(model, runtime)
        return student
    if mode == "ddp" and world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        return DistributedDataParallel(student, device_ids=device_ids)
    return student


def shard(model: MultiCropWrapper, runtime: Runtime) -> None:
    """FSDP2: every transformer block is one unit (gathered just before it runs, freed after), the rest
    (embeddings, final norm, heads) the root unit."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    if runtime.device.type == "cuda" and runtime.precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.backbone.blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (a collective: every rank must call it); a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def sharded_times_plain(tensors: list[torch.Tensor]) -> AbstractContextManager:
    """Lets sharded tensors (DTensors) be combined with plain ones (e.g. per-parameter clip factors)."""
    from torch.distributed.tensor import DTensor

    if not any(isinstance(t, DTensor) for t in tensors):
        return nullcontext()
    from torch.distributed.tensor.experimental import implicit_replication

    return implicit_replication()


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict (every rank must call it when sharded; rank 0 receives the tensors)."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict (already checked against the model's keys and shapes) into a plain or sharded model."""
    if not is_sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state, indexed by parameter position as `optimizer.state_dict()` is."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    by_name = get_optimizer_state_dict(model, optimizer,
                                       options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not by_name:  # ranks other than 0 receive nothing: only rank 0 writes checkpoints
        return {}
    index = {name: i for i, name in enumerate(_names_in_order(by_name["param_groups"]))}
    return {
        "state": {index[name]: value for name, value in by_name["state"].items()},
        "param_groups": [{**g, "params": [index[name] for name in g["params"]]} for g in by_name["param_groups"]],
    }


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an optimizer state indexed by position into the optimizer of a plain or sharded model."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = {id(p): name for name, p in model.named_parameters()}
    ordered = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name = {
        "state": {ordered[i]: value for i, value in state["state"].items()},
        "param_groups": [{**g, "params": [ordered[i] for i in g["params"]]} for g in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def _names_in_order(param_groups: list[dict[str, Any]]) -> list[str]:
    return [name for group in param_groups for name in group["params"]]
