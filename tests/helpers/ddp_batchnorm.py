"""Run under torchrun: GlobalBatchNorm in N processes against BatchNorm in one, in float64.

Prints the largest gradient and running-statistic differences as JSON (rank 0)."""

import copy
import json

import torch
import torch.distributed as dist
from torch import nn

from falign.training.distributed import sync_batchnorm

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
x = torch.randn(9, 3, 4, 4, dtype=torch.float64)  # 9 examples: unequal shares
g = torch.randn(9, 2, dtype=torch.float64)
model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                      nn.Linear(16, 2)).double()
reference = copy.deepcopy(model)
out_ref = reference(x)
(out_ref * g).sum().backward()
assert sync_batchnorm(model) == 1
ddp = nn.parallel.DistributedDataParallel(model)
index = torch.tensor_split(torch.arange(9), world)[rank]
share = slice(int(index[0]), int(index[-1]) + 1)
out = ddp(x[share])
(out * g[share]).sum().mul(world).backward()  # a share of the sum; DDP averages over world
pairs = zip(model.parameters(), reference.parameters(), strict=True)
stats = zip(model[1].buffers(), reference[1].buffers(), strict=True)
report = {
    "output": float((out - out_ref[share]).abs().max()),
    "grads": max(float((p.grad - q.grad).abs().max()) for p, q in pairs),
    "running": max(float((a - b).abs().max()) for a, b in stats),
}
if rank == 0:
    print(json.dumps(report))
dist.destroy_process_group()
