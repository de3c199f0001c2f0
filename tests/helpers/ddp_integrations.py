"""Run under ``torchrun --nproc_per_node 2``: train each rule named on the command line with
Lightning (``lightning``) or the Hugging Face Trainer (``hf``) and falign's callback, exactly as
the single-process tests do, on two CPU processes (gloo); rank 0 saves every rule's final
state dict to OUT.  Used by tests/test_integrations_lightning.py and test_integrations_hf.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_integrations.py MODE OUT RULE...
"""

from __future__ import annotations

import os
import sys

import torch


def lightning(out: str, rules: list[str]) -> None:
    import test_integrations_lightning as t

    from falign.integrations.lightning import FalignCallback

    L = t.L
    weights, alignment = {}, {}
    rank = 0
    for rule in rules:
        x, y = t.data(t.BATCH * t.ACCUMULATE * t.STEPS * 2)
        data = torch.utils.data.TensorDataset(x, y)
        # Lightning's own sampler shuffles a training set; this one gives rank r samples r, r + 2, ...
        sampler = torch.utils.data.DistributedSampler(data, num_replicas=2, rank=int(os.environ["RANK"]),
                                                      shuffle=False)
        loader = torch.utils.data.DataLoader(data, batch_size=t.BATCH, sampler=sampler)
        callback = FalignCallback(alignment_every=2, **t.callback_options(rule))
        trainer = L.Trainer(max_steps=t.STEPS, accumulate_grad_batches=t.ACCUMULATE, accelerator="cpu",
                            devices=2, strategy="ddp", logger=False, callbacks=[callback],
                            use_distributed_sampler=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        lit = t.Lit(t.converted(rule))
        trainer.fit(lit, loader)
        rank = trainer.global_rank
        weights[rule] = lit.net.state_dict()
        alignment[rule] = callback.last  # the probe at the last measured step
    if rank == 0:
        torch.save({"weights": weights, "alignment": alignment}, out)


def hf(out: str, rules: list[str]) -> None:
    import test_integrations_hf as t

    weights, alignment = {}, {}
    rank = 0
    for rule in rules:
        trainer, model = t.train(rule, world=2, alignment_every=2)
        rank = trainer.args.process_index
        weights[rule] = model.state_dict()
        callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, t.FalignCallback))
        alignment[rule] = callback.last  # the probe at the last measured step
    if rank == 0:
        torch.save({"weights": weights, "alignment": alignment}, out)


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, out, *names = sys.argv[1:]
    {"lightning": lightning, "hf": hf}[mode](out, names)
