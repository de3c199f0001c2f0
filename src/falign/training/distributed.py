"""Data-parallel training on PyTorch's own engine (torch.distributed + DistributedDataParallel).

Launched by ``torchrun --nproc_per_node N -m falign train CONFIG.yaml`` (multi-node through
torchrun's rendezvous): torchrun sets RANK / WORLD_SIZE / LOCAL_RANK and ``setup`` joins the
process group (NCCL on CUDA, gloo on CPU).  Every rank builds the same model from the same
seed, so the feedback matrices are identical everywhere without communication; the rules'
per-step state (brsf redraws from (seed, step), sign-tracking copies of the all-reduced W, KP
decay) stays identical too.  Every rank draws the same order and the same augmentation draws
for each global batch, but loads (for a streamed dataset: decodes) and transforms only its own
contiguous share (``falign.data.batches(..., part=(rank, world))``), so N processes compute
what one process computes on the same global batch.

Elastic restarts (``torchrun --max-restarts N ... --resume``): torchrun's agent keeps one
key-value store for the whole job and, with its static rendezvous (``--master_port``), hands
the restarted processes that same store with no per-attempt prefix, so a restarted rank can
read the addresses the killed group published and fail to connect ("Gloo connectFullMesh
failed ... Connection refused") or wait on a dead peer.  ``setup`` therefore joins the group
through the agent's store under a prefix of its own for each restart
(``TORCHELASTIC_RESTART_COUNT``), with PyTorch's public ``TCPStore`` / ``PrefixStore``.
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
        store = _attempt_store()
        if store is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=store, rank=int(os.environ["RANK"]),
                                    world_size=world)
        owns = True
    return DistInfo(True, dist.get_rank(), dist.get_world_size(), local_rank, owns)


def _attempt_store():
    """Under a torchrun agent's store: that store, prefixed by this restart's number (None
    otherwise: ``init_process_group`` reads the environment as usual)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from datetime import timedelta

    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    timeout = timedelta(seconds=float(os.environ.get("FALIGN_DIST_TIMEOUT", "1800")))
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          is_master=False, timeout=timeout)
    return dist.PrefixStore(f"falign/attempt_{attempt}", store)


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


def all_gather(info: DistInfo, *values: float) -> list[list[float]]:
    """Every process's ``values``, in rank order (float64: counts up to 2**53 stay exact)."""
    if not info.enabled:
        return [list(values)]
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    out = [torch.empty_like(t) for _ in range(info.world)]
    dist.all_gather(out, t)
    return [o.cpu().tolist() for o in out]


def shard(info: DistInfo, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """This rank's share of a global batch (equal contiguous chunks)."""
    if not info.enabled:
        return list(tensors)
    return [torch.tensor_split(t, info.world)[info.rank] for t in tensors]


def teardown(info: DistInfo) -> None:
    if info.enabled and info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def reduce_sum(info: DistInfo):
    """A function that sums a tensor over the processes (the identity for one)."""
    if not info.enabled:
        return lambda t: t

    def reduce(t: torch.Tensor) -> torch.Tensor:
        out = t.detach().clone()
        dist.all_reduce(out)
        return out

    return reduce


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; its gradient is the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.contiguous().clone()
        dist.all_reduce(out)
        return out


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch normalisation over the *global* batch of all processes, on any backend.

    Torch's ``SyncBatchNorm`` runs on CUDA only; this one all-reduces the per-channel count,
    sum and centred sum of squares (two passes, as precise as one process's statistics) through
    a differentiable sum, so its backward sums the gradient terms of the statistics over the
    processes too (tested in float64 against one process: equal to 1e-15).  In training mode the output and
    the running statistics are those of one process on the whole batch; eval mode uses the
    running statistics, as BatchNorm does.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {x.dim()}-D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training or not self.track_running_stats) or not dist.is_initialized():
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
        stats = all_reduce(torch.cat([count.view(1), x.sum(dims)]))
        n, mean = stats[0], stats[1:] / stats[0]
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n  # biased, as normalisation uses
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                unbiased = var.detach() * (n.detach() / (n.detach() - 1).clamp_min(1))
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return y


def sync_batchnorm(model: torch.nn.Module) -> int:
    """Replace every BatchNorm{1,2,3}d of ``model`` (in place) by a :class:`GlobalBatchNorm`
    sharing its parameters and buffers; returns how many were replaced."""
    count = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) in (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d):
                new = GlobalBatchNorm.__new__(GlobalBatchNorm)
                new.__dict__.update(child.__dict__)
                setattr(parent, name, new)
                count += 1
    return count
