# %% [markdown]
# # Reproduce a published result and read its report
#
# `falign reproduce NAME` trains what a paper trained, runs the paper's analyses, prints the
# measured numbers beside the published ones and writes a self-contained report. This tutorial
# runs the **DFA framework report**'s MNIST experiment (784-200-10 tanh network, direct
# feedback alignment after Nøkland 2016, against backprop, plus the report's batch- and
# class-averaged DFA loops) at **smoke scale**: 1,500 images per split and 2 epochs, so it
# checks the whole pipeline in well under a minute on a CPU. The numbers it prints are **not**
# comparable with the published ones; `scale="full"` follows the published protocol.
#
# It reads MNIST from the data folder (`$FALIGN_DATA`, else `./data`; `falign download mnist`
# fetches it) and writes only into a temporary directory.

# %%
import re
import shutil
import tempfile
from pathlib import Path

import falign.reproduce
from falign.training import RunRecord

workdir = Path(tempfile.mkdtemp(prefix="falign-reproduce-"))

# %% [markdown]
# ## The reproductions falign knows

# %%
for name, target in falign.reproduce.TARGETS.items():
    print(f"{name:20s} {target.title}")

# %% [markdown]
# ## Run one
#
# From Python, `reproduce(name, scale=..., out=...)` returns the path of the HTML report. The
# command line is the same call:
#
# ```bash
# falign reproduce dfa-mnist --scale smoke --out runs/dfa-mnist-smoke
# ```
#
# Every run inside is resumable: after an interruption, `resume=True` (`--resume`) continues from
# the last completed epoch.

# %%
out = workdir / "dfa-mnist"
report = falign.reproduce.reproduce("dfa-mnist", scale="smoke", out=out, log=lambda line: None)
print("report:", report.relative_to(workdir))

# %% [markdown]
# ## What it wrote
#
# One directory per training run (the comparison of DFA and BP under `compare/`, and one run per
# averaged loop), the analyses (confusion matrices and per-class reports, under `analysis/`) and
# the report (`report/`: `report.html`, `results.txt`, `figures/`).

# %%
for path in sorted(out.iterdir()):
    print(path.name + ("/" if path.is_dir() else ""))

# %% [markdown]
# ## `results.txt`: measured beside published
#
# The first lines say what was trained (dataset and split sizes, model, seed); then one row per
# run: its rule and options, optimiser, learning rate, weight decay, feedback scale, best
# validation accuracy, the test accuracy of the best-validation model, the best epoch, and the
# published test accuracy where the paper gives one ("-" where it does not: the report publishes
# no number for its averaged loops). The notes that follow say how the setting differs from the
# paper's, and give each run's per-class precision, recall and F1.

# %%
results = (report.parent / "results.txt").read_text()
table, _, notes = results.partition("Notes:")
print(table)
print("Notes:" + "\n".join(notes.splitlines()[:4]))

# %% [markdown]
# ## The report page
#
# `report.html` is one self-contained file (figures embedded) to open in a browser or attach to
# an issue. Its sections:

# %%
html = report.read_text()
for level, title in re.findall(r"<h([23])[^>]*>(.*?)</h\1>", html):
    print("  " * (int(level) - 2) + "- " + re.sub(r"<[^>]+>", "", title))

# %% [markdown]
# The figures are also written as PNG and PDF files beside it:

# %%
print(sorted(p.name for p in (report.parent / "figures").iterdir()))

# %% [markdown]
# ## One run's record
#
# Each run directory holds `tracking.json`, the run record: config, per-epoch metrics, best
# epoch, test accuracy, status and environment (see [Run records](../run-record.md)).
# `RunRecord.read` gives it back as a typed object; accuracies are fractions. A comparison over
# seeds keeps one directory per method and seed (`compare/dfa/seed0`, ...; the smoke scale
# trains seed 0 only).

# %%
record = RunRecord.read(out / "compare" / "dfa" / "seed0" / "tracking.json")
print("status:", record.status, "| dataset:", record.dataset)
print("validation accuracy per epoch:", [round(100 * a, 2) for a in record.val_curve])
print(f"best epoch {record.best_epoch}: validation {100 * record.best_val_acc:.2f}%, "
      f"test {100 * record.test_acc:.2f}%")
print("rule:", record.config["rule"])

# %% [markdown]
# The full-scale run (`scale="full"`, 80 epochs on all of MNIST, seeds 0, 1 and 2) takes a few
# minutes per run on a CPU; [Results](../experiments/results.md) lists what the shipped experiments reach.

# %%
shutil.rmtree(workdir)
