"""A small GPT-style character model learns Shakespeare with feedback alignment, trained by
PyTorch Lightning.

    FALIGN_DATA=../shared/data python examples/lightning_fa.py [--steps 150]

The network is falign's ``char_transformer`` converted to FA; Lightning's own ``Trainer`` runs
the loop (two micro-batches accumulated a step), and
:class:`falign.integrations.lightning.FalignCallback` gives each step what it needs and measures
the alignment of FA's updates with backprop's every 25 optimizer steps, written by Lightning's
CSV logger.  At the end ``falign.export`` hands the model on as a plain ``CharTransformer``:
its state dict loads strictly into an unconverted one, which computes the same logits.
Needs ``pip install 'falign[lightning]'``.  Exits non-zero unless the loss fell and the export
is the same network.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

import falign
from falign.data import load_dataset
from falign.integrations.lightning import FalignCallback

SEQ_LEN, BATCH = 64, 32


class CharLM(L.LightningModule):
    def __init__(self, net: torch.nn.Module, lr: float) -> None:
        super().__init__()
        self.net, self.lr = net, lr

    def forward(self, ids):
        return self.net(ids)

    def training_step(self, batch, batch_idx):
        ids, targets = batch  # (N, T): the next character at every position
        return F.cross_entropy(self(ids).flatten(0, 1), targets.flatten())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def plain_model(vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return falign.create_model("char_transformer", num_classes=vocab, in_shape=(SEQ_LEN,), dim=64, depth=2,
                               heads=4, dropout=0.0)


@torch.no_grad()
def loss_on(net: torch.nn.Module, ids: torch.Tensor, targets: torch.Tensor) -> float:
    return float(F.cross_entropy(net(ids).flatten(0, 1), targets.flatten()))


def main(steps: int = 150) -> int:
    text = load_dataset("text", seq_len=SEQ_LEN, limit=400_000)
    train, val = text.train, text.val
    net = falign.convert(plain_model(text.num_classes), "fa", seed=0)
    before = loss_on(net, val.x[:256], val.y[:256])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train.x, train.y), batch_size=BATCH,
                                         shuffle=True, generator=torch.Generator().manual_seed(0))
    callback = FalignCallback(alignment_every=25)
    with tempfile.TemporaryDirectory() as logs:
        trainer = L.Trainer(max_steps=steps, accumulate_grad_batches=2, accelerator="cpu", devices=1,
                            callbacks=[callback], logger=L.pytorch.loggers.CSVLogger(logs, name="fa"),
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(CharLM(net, lr=3e-3), loader)
        rows = [row for f in Path(logs).rglob("metrics.csv") for row in csv.DictReader(f.open())]
    after = loss_on(net, val.x[:256], val.y[:256])
    print(f"FA, {steps} optimizer steps: validation loss {before:.3f} -> {after:.3f} nats "
          f"({after / math.log(2):.2f} bits per character)")
    for row in rows:  # what the callback logged through Lightning's CSV logger
        angles = {k.split("/")[1]: float(v) for k, v in row.items() if k.endswith("/update_angle") and v}
        if angles:
            hidden = [a for name, a in angles.items() if name != "net.head"]  # (the head's is 0: exact)
            print(f"  step {row['step']}: update_angle, degrees from backprop's update: mean "
                  f"{sum(hidden) / len(hidden):.1f} over {len(hidden)} hidden layers, "
                  f"net.blocks.1.mlp.fc2 {angles['net.blocks.1.mlp.fc2']:.1f}")

    plain = falign.export(net)  # the plain architecture, trained weights, no feedback
    fresh = plain_model(text.num_classes)
    fresh.load_state_dict(plain.state_dict(), strict=True)
    with torch.no_grad():
        same = torch.allclose(fresh(val.x[:8]), net(val.x[:8]), atol=1e-5)
    print(f"export: a plain {type(plain).__name__}, strict load, same outputs: {same}")
    return 0 if (after < before - 0.2 and same and rows) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    sys.exit(main(parser.parse_args().steps))
