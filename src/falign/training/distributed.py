"""Data-parallel training on PyTorch's own engine (torch.distributed + DistributedDataParallel).

Launched by ``torchrun --nproc_per_node N -m falign train CONFIG.yaml`` (multi-node through
torchrun's rendezvous): torchrun sets RANK / WORLD_SIZE / LOCAL_RANK and ``setup`` joins the
process group (NCCL on CUDA, gloo on CPU).  Every rank builds the same model from the same
seed, so the feedback matrices are identical everywhere without communication; the rules'
per-step state (brsf redraws from (seed, step), sign-tracking copies of the all-reduced W, KP
decay) stays identical too.  Each global batch is drawn and augmented identically on every
rank and split into equal per-rank shares, so N processes compute what one process computes on
the same global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    enabled: bool = False
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        owns = True
    return DistInfo(True, dist.get_rank(), dist.get_world_size(), local_rank, owns)


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_sum(info: DistInfo, *values: float) -> list[float]:
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def shard(info: DistInfo, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """This rank's share of a global batch (equal contiguous chunks)."""
    if not info.enabled:
        return list(tensors)
    return [torch.tensor_split(t, info.world)[info.rank] for t in tensors]


def teardown(info: DistInfo) -> None:
    if info.enabled and info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
