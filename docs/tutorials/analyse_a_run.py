# %% [markdown]
# # Analyse a run: alignment, CKA, Grad-CAM and the figures
#
# The analyses papers on feedback alignment publish, on small runs you make here:
#
# 1. **alignment during training**: the angle between each layer's update and the true
#    backprop gradient, the angle between the signals sent backward, and sign concordance
#    (Lillicrap et al. 2016; Moskovitz et al. 2018; Lance & Kieu 2026), recorded by the runner
#    every `train.alignment_every` steps;
# 2. **CKA** between the hidden representations of a BP and an FA network (Kornblith et al.
#    2019), on the test subsets of Lance & Kieu 2026;
# 3. **Grad-CAM** channel importance (Selvaraju et al. 2017) and the top-activating exemplars of
#    the most important channels, on a small convolutional network;
# 4. the **figures** `falign.plots` draws from all of these.
#
# It trains on a 2,000-image subset of MNIST (from `$FALIGN_DATA`, else `./data`) for a few
# seconds per model, and writes only into a temporary directory. Every analysis returns
# tensors or dataclasses; only `falign.plots` writes files. The figures need matplotlib
# (`pip install 'falign[analysis]'`), and the Grad-CAM maps captum.

# %%
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import falign
from falign.analysis.alignment import measure_alignment
from falign.analysis.cka import cka_matrix, cka_subsets
from falign.analysis.classification import classification_report
from falign.analysis.gradcam import channel_importance, exemplars, gradcam_map, top_channels
from falign.data import batches, load_dataset
from falign.training import load_model, parse_config, train

torch.manual_seed(0)
workdir = Path(tempfile.mkdtemp(prefix="falign-analyse-"))

# %% [markdown]
# ## 1. A run with alignment records
#
# A config is the same mapping a YAML file holds (see the [config reference](../config.md)).
# `train.alignment_every: 5` makes the runner measure, every 5th training step, each converted
# layer's alignment with backprop on that step's batch, at the cost of one extra exact pass.
# The same config trains a BP twin (`rule.name: bp`) for the comparisons below.

# %%
def config(rule: str) -> dict:
    return {
        "name": f"mnist-mlp-{rule}",
        "seed": 0,
        "data": {"name": "mnist", "subset": 2000},
        "model": {"name": "mlp", "options": {"sizes": [784, 128, 64, 10], "activation": "tanh"}},
        "rule": {"name": rule},
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {"epochs": 3, "batch_size": 50, "alignment_every": 5},
    }


records = {rule: train(parse_config(config(rule)), workdir / rule, progress=False, log=None)
           for rule in ("bp", "fa")}
for rule, record in records.items():
    print(f"{rule}: test accuracy {100 * record.test_acc:.1f}% after {len(record.epochs)} epochs, "
          f"{len(record.alignment)} alignment records")

# %% [markdown]
# Each alignment record holds, per converted layer, the measures of
# `falign.analysis.alignment`:
#
# * `update_angle`: degrees between the rule's weight update and the backprop gradient of the
#   same weights on the same batch (0: identical, 90: orthogonal);
# * `signal_angle`: degrees between the signal the layer sends to its input and backprop's
#   (None for the first layer, which sends none);
# * `feedback_angle`, `norm_ratio`, `sign_concordance`: B against W (the fraction of entries of
#   equal sign; 0.5 is chance for a random B);
# * `update_sign_concordance`: the fraction of update entries whose sign matches the gradient's.
#
# FA starts near 90° and aligns as W comes to resemble B:

# %%
fa_record = records["fa"]


def fmt(value):
    return "   -" if value is None else f"{value:6.2f}"


print("step  layer     update_angle  signal_angle  sign_conc(B,W)  sign_conc(update)")
for rec in (fa_record.alignment[0], fa_record.alignment[-1]):
    for layer, m in rec.layers.items():
        print(f"{rec.step:4d}  {layer:8s}  {fmt(m['update_angle'])}        {fmt(m['signal_angle'])}"
              f"        {fmt(m['sign_concordance'])}          {fmt(m['update_sign_concordance'])}")

# %% [markdown]
# Three things to read in it. The output layer (`layers.2`) has an update angle of 0: its
# update is the local gradient `eᵀh`, exact under FA; what FA changes is the signal it sends
# down, whose angle falls from about 90°. It falls because each layer's W comes to resemble
# its own fixed B (B–W sign concordance rises above 0.5), so the signal sent down through B
# points closer to the one W would send, and the update angles of the layers below fall with
# it. The first layer's B is never used (its input, the data, needs no gradient), so nothing
# pulls its W towards it and its B–W concordance stays at chance.
#
# The same measures on any batch, for any converted model, with `measure_alignment` (a rule
# pass and an exact pass; neither changes the rules' state, the batch-norm statistics or
# `.grad`). Here on the trained FA model, loaded back from its best checkpoint:

# %%
data = load_dataset("mnist", subset=2000)
x_test = data.eval_transform(data.test.x)  # (2000, 1, 28, 28) float, normalised
y_test = data.test.y

fa_model = load_model(workdir / "fa" / "best.pt")
bp_model = load_model(workdir / "bp" / "best.pt")
for layer, m in measure_alignment(fa_model, x_test[:256], y_test[:256], F.cross_entropy).items():
    print(f"{layer:8s} update angle {m.update_angle:5.1f} deg, "
          f"update sign concordance {m.update_sign_concordance:.2f}")

# %% [markdown]
# ## 2. CKA between the BP and the FA network
#
# `cka_matrix` compares the outputs of named submodules of two models on the same inputs
# (here the hidden activations `acts.0` and `acts.1` of the MLP); entry (i, j) compares layer i
# of model A with layer j of model B. `cka_subsets` repeats it on the subsets of Lance & Kieu
# 2026 (all test images, both correct, BP correct and FA wrong) with the unbiased minibatch
# estimator, whose value does not depend on a subset's size.

# %%
layers = ["acts.0", "acts.1"]
full = cka_matrix(bp_model, fa_model, x_test, layers, layers)
print(f"linear CKA, BP (rows) vs FA (columns), n={full.n}:\n{full.matrix.numpy().round(3)}")

subsets = cka_subsets(bp_model, fa_model, x_test, y_test, layers, layers, minibatch_size=128)
for key, result in subsets.items():
    print(f"{key:24s} n={result.n:4d}  diagonal {result.diagonal().numpy().round(3)}"
          + (f"  ({result.skipped})" if result.skipped else ""))

# %% [markdown]
# ## 3. Grad-CAM on a small convolutional network
#
# A convolutional model of your own, converted to FA and trained with an ordinary loop on the
# training subset.

# %%
cnn = falign.convert(nn.Sequential(
    nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2),      # conv1: (N, 8, 12, 12)
    nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2),     # conv2: (N, 16, 4, 4)
    nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
), "fa", seed=0)
opt = torch.optim.Adam(cnn.parameters(), lr=2e-3)
order = torch.Generator().manual_seed(0)
for _epoch in range(3):
    for x, y in batches(data.train, 50, transform=data.train_transform, shuffle=True, generator=order):
        opt.zero_grad()
        F.cross_entropy(cnn(x), y).backward()
        opt.step()
with torch.no_grad():
    cnn_pred = cnn.eval()(x_test).argmax(1)
cnn.train()
print(f"FA CNN test accuracy: {100 * float((cnn_pred == y_test).float().mean()):.1f}%")

# %% [markdown]
# Through a converted network autograd returns the *rule's* signal, not the gradient, so every
# Grad-CAM function takes `gradient=`: `"true"` differentiates by backprop (inside
# `falign.exact_backward`), `"feedback"` uses the signal FA trained with. The layer is named as
# in `model.named_modules()` (`"3"`: the second convolution of the `Sequential`).
#
# `channel_importance` gives Grad-CAM's channel weights α_k (mean over positions of
# ∂y_c/∂A_k) per example; `top_channels` ranks the channels per class:

# %%
alpha_true = channel_importance(cnn, "3", x_test[:500], y_test[:500], gradient="true")
alpha_fa = channel_importance(cnn, "3", x_test[:500], y_test[:500], gradient="feedback")
print("alpha:", tuple(alpha_true.shape), "(examples, channels)")
cos = F.cosine_similarity(alpha_true, alpha_fa, dim=1)
print(f"per-example cosine between true and feedback importance: median {cos.median():.2f}")

ranking = top_channels(cnn, "3", x_test, y_test, k=3)
for c in range(3):
    print(f"class {c}: most important channels {ranking.per_class[c]}")

# %% [markdown]
# `exemplars` picks the k channels with the largest mean |importance| and, for each, the n test
# images that activate it most: the exemplar analysis of Lance & Kieu 2026. `gradcam_map` is
# the map itself (captum's `LayerGradCam`), resized to the input for overlays.

# %%
exemplar_set = exemplars(cnn, "3", x_test, y_test, k=3, n=6)
print("channels:", exemplar_set.channels)
print("their top images (test indices):", {c: idx.tolist() for c, idx in exemplar_set.indices.items()})

maps = gradcam_map(cnn, "3", x_test[:8], y_test[:8], upsample_to=28)
print("Grad-CAM maps:", tuple(maps.shape))

# %% [markdown]
# ## 4. Figures
#
# `falign.plots` takes the records and results above and writes PNG + PDF files. Run records
# go in as a mapping label -> record (a `RunRecord`, or a `tracking.json` read as JSON); a method
# keeps its colour in every figure.

# %%
from falign import plots  # noqa: E402  (matplotlib is imported inside the functions)

figures = workdir / "figures"
figures.mkdir()
written = []
written += plots.plot_val_accuracy(records, figures / "val_accuracy")
written += plots.plot_loss_curves(records, figures / "loss_curves")
written += plots.plot_alignment({"fa": fa_record}, figures / "update_angle", "update_angle")
written += plots.plot_sign_concordance({"fa": fa_record}, figures / "sign_concordance")
written += plots.plot_cka_heatmaps({k: v for k, v in subsets.items() if not v.skipped},
                                   figures / "cka", title="CKA, BP vs FA")
report = classification_report(y_test, cnn_pred, class_names=data.classes)
written += plots.plot_confusion_matrix(report, None, figures / "confusion", title="FA CNN")
written += plots.plot_exemplar_grid({"fa": exemplar_set}, figures / "exemplars", mean=[0.1307], std=[0.3081])
print(sorted(p.name for p in written))
print(report.to_text()[:400])

# %% [markdown]
# `falign report` and `falign reproduce` call the same functions for every run they write.

# %%
shutil.rmtree(workdir)
