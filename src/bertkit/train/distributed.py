"""Several processes under `torchrun`: this process's device and rank, and the model wrapped to train across them.

Replicated (DDP: every rank holds the whole model and averages gradients) by default; sharded (FSDP2: each rank
holds a slice of parameters, gradients and optimizer state) for models too big for one device. Run plainly (one
process), none of this applies and the model trains as it is.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from bertkit.machine import pick_device

# The modules to shard one by one under FSDP (e.g. a model's encoder layers); what they leave out is one more unit.
ShardUnits = Callable[[nn.Module], list[nn.Module]]


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when run plainly."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def configure_cuda() -> None:
    """What training on CUDA sets, process-wide: TF32 tensor cores for the fp32 matmuls that autocast leaves (10-bit
    mantissa inputs, fp32 accumulate), and no cuDNN attention: its backward (PyTorch's default SDPA kernel on Hopper
    since 2.11) returns NaN query gradients for some masked shapes (pytorch/pytorch#196678); the memory-efficient
    kernel takes over."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.enable_cudnn_sdp(False)


def setup_device(name: str | None) -> tuple[torch.device, int, int]:
    """The device for this process (run plainly: the one named, `cuda:1` the second GPU; under torchrun: the GPU of
    its local rank), its rank and the world size; starts the process group under torchrun when none is running."""
    rank, world, local = dist_info()
    chosen = pick_device(name)
    if chosen.type == "cuda":
        index = chosen.index if world == 1 and chosen.index is not None else local
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
        configure_cuda()
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, rank, world


def shard(model: nn.Module, units: ShardUnits | None) -> nn.Module:
    """Shard `model` in place with FSDP2: each of `units(model)` on its own (its parameters are gathered only while
    it runs), then the root over what remains (embeddings, heads, a tied decoder). Without `units` the whole model
    is one unit, which saves memory only between steps. Each unit moves its own shard to the device, so the whole
    model never sits on one device."""
    from torch.distributed.fsdp import fully_shard

    for unit in units(model) if units is not None else []:
        fully_shard(unit)
    fully_shard(model)
    return model


def replicate(model: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """`model` (already on `device`) wrapped in DDP. `find_unused_parameters`: some parameters get no gradient in a
    step (e.g. the NSP head when pre-training without NSP); DDP would otherwise wait for them forever."""
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def reshard(model: nn.Module) -> None:
    """Put FSDP's gathered parameters back into shards after a forward with no backward (an evaluation): the
    backward is what normally does it."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """True when any rank says so: a decision to stop must be the same on every rank (each reads its own clock and
    its own batches), or one would leave the loop while the others wait for it in a collective."""
    if world == 1:
        return flag
    t = torch.tensor(int(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
