"""Make the golden fixtures: a small run and the value of every analysis on it, as computed by
the code of the commit that made them.  A refactor must reproduce them to the last bit
(tests/test_golden.py); regenerate them only when a change is meant to change a number, and say
so in the commit.

    FALIGN_DATA=../shared/data python tests/golden/make_golden.py

Writes tests/golden/run/ (config.yaml, tracking.json, epoch_001.pt, best.pt: the checkpoints
hold the model only) and tests/golden/values.pt.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CONFIG = {
    "name": "golden", "seed": 3, "device": "cpu",
    "data": {"name": "mnist", "subset": 300, "val_size": 100, "options": {"pad_to": 32}},
    "model": {"name": "lenet"},
    "rule": {"name": "fa"},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "train": {"epochs": 2, "batch_size": 50, "checkpoint_every_epoch": True, "alignment_every": 3,
              "alignment_batch": 32},
}
LAYERS = ["conv1", "conv2", "conv3", "fc1", "fc2"]
KEEP = ("config.yaml", "tracking.json", "epoch_001.pt", "best.pt")


def train_run(out: Path):
    """The golden run, trained into ``out`` (one thread)."""
    from falign.training.config import parse_config
    from falign.training.loop import train

    return train(parse_config(CONFIG, where="golden"), out, log=None, threads=1, progress=False)


def _model_only(path: Path, to: Path) -> None:
    ckpt = torch.load(path, weights_only=False)
    torch.save({k: ckpt[k] for k in ckpt if k != "optimizer"}, to)


def analysis_inputs():
    """A fixed batch of the run's test images and labels (eval transform applied)."""
    from falign.training.config import parse_config
    from falign.training.loop import build_dataset

    data = build_dataset(parse_config(CONFIG, where="golden"), torch.device("cpu"))
    x = data.eval_transform(data.test.x[:64])
    return x, data.test.y[:64]


def dfa_loop_updates() -> dict[str, torch.Tensor]:
    """The averaged DFA loops' gradients on a tiny MLP (batch / class x mean / sum step)."""
    import torch.nn.functional as F

    import falign
    from falign.layers import StepContext, train_step

    out = {}
    x = torch.randn(12, 20, generator=torch.Generator().manual_seed(5))
    y = torch.arange(12) % 4
    for mode in ("batch", "class"):
        for step in ("mean", "sum"):
            torch.manual_seed(0)
            model = falign.create_model("mlp", rule="dfa", num_classes=4, in_shape=(20,),
                                        sizes=[20, 16, 8, 4], activation="tanh",
                                        rule_options={"seed": 1, "average": mode, "average_step": step})
            model.zero_grad()
            train_step(model, model, x, y, StepContext(loss_fn=F.cross_entropy))
            for name, p in model.named_parameters():
                if p.grad is not None:
                    out[f"{mode}-{step}/{name}"] = p.grad.detach().clone()
    return out


def compute_values(run: Path) -> dict[str, torch.Tensor]:
    """Every analysis on the run's best model (and its epoch-1 model), as tensors."""
    import torch.nn.functional as F

    from falign.analysis.alignment import measure_alignment
    from falign.analysis.cka import cka_matrix, cka_subsets, layer_activations, linear_cka, rbf_cka
    from falign.analysis.gradcam import (
        channel_importance,
        exemplars,
        gradcam_map,
        top_activating,
        top_channels,
    )
    from falign.training.loop import load_model

    torch.set_num_threads(1)
    best = load_model(run / "best.pt", map_location="cpu")
    first = load_model(run / "epoch_001.pt", map_location="cpu")
    x, y = analysis_inputs()
    v: dict[str, torch.Tensor] = {}
    best.train()
    for layer, m in measure_alignment(best, x[:32], y[:32], F.cross_entropy).items():
        for key, value in m.to_dict().items():
            v[f"alignment/{layer}/{key}"] = torch.tensor(float("nan") if value is None else value,
                                                        dtype=torch.float64)
    best.eval()
    acts = layer_activations(best, x, LAYERS)
    other = layer_activations(first, x, LAYERS)
    for name in LAYERS:
        v[f"cka/linear-feature/{name}"] = linear_cka(acts[name], other[name], form="feature")
        v[f"cka/linear-gram/{name}"] = linear_cka(acts[name], other[name], form="gram")
        v[f"cka/rbf/{name}"] = rbf_cka(acts[name], other[name])
    for kernel, minibatch in (("linear", False), ("linear", True), ("rbf", False)):
        res = cka_matrix(best, first, x, LAYERS, LAYERS, kernel=kernel, minibatch=minibatch, batch_size=16)
        v[f"cka_matrix/{kernel}-{'minibatch' if minibatch else 'full'}"] = res.matrix
    for estimator in ("minibatch", "full"):
        subsets = cka_subsets(best, first, x, y, LAYERS, LAYERS, estimator=estimator, minibatch_size=16,
                              min_examples=4)
        for subset, res in subsets.items():
            v[f"cka_subsets/{estimator}/{subset}"] = res.matrix
    for gradient in ("true", "feedback"):
        v[f"gradcam/importance/{gradient}"] = channel_importance(best, "conv2", x, y, gradient=gradient)
        v[f"gradcam/map/{gradient}"] = gradcam_map(best, "conv2", x, y, gradient=gradient, upsample_to=32)
        ranking = top_channels(best, "conv2", x, y, k=3, gradient=gradient)
        v[f"top_channels/{gradient}/mean_importance"] = ranking.mean_importance
        for c, chans in ranking.per_class.items():
            v[f"top_channels/{gradient}/class{c}"] = torch.tensor(chans)
        ex = exemplars(best, "conv2", x, y, k=3, n=4, gradient=gradient)
        v[f"exemplars/{gradient}/channels"] = torch.tensor(ex.channels)
        for c, idx in ex.indices.items():
            v[f"exemplars/{gradient}/indices/{c}"] = idx
            v[f"exemplars/{gradient}/images/{c}"] = ex.images[c]
    for c, idx in top_activating(best, "conv2", x, [0, 1, 2], n=5).items():
        v[f"top_activating/{c}"] = torch.as_tensor(idx)
    for key, value in dfa_loop_updates().items():
        v[f"dfa_loops/{key}"] = value
    return v


def main() -> int:
    run = HERE / "run"
    with tempfile.TemporaryDirectory() as tmp:
        train_run(Path(tmp) / "run")
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir()
        for name in KEEP:
            src = Path(tmp) / "run" / name
            if name.endswith(".pt"):
                _model_only(src, run / name)
            else:
                shutil.copy2(src, run / name)
    torch.save(compute_values(run), HERE / "values.pt")
    print(f"wrote {run} and {HERE / 'values.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
