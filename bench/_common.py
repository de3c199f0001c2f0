"""What the benchmarks share: one result row, the summary table, the data folder, a config file.

Every benchmark measures falign and its baseline in the same run, interleaved, and reports the
median over rounds of the per-round ratio, so drifts of a shared machine cancel.  Nothing here
asserts a time: targets are printed beside the ratios.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: the repository's sibling ``shared/data`` when FALIGN_DATA is not set
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass
class Row:
    """One line of the summary table.  ``ratio`` is falign / plain unless ``config`` says."""

    benchmark: str
    config: str
    plain: float
    falign: float
    unit: str  # "ms", "s", "img/s" or "%"
    ratio: float
    target: str = "-"
    #: None: no target; else whether this measurement met it
    met: bool | None = None


def data_dir() -> Path:
    root = Path(os.environ.get("FALIGN_DATA") or DEFAULT_DATA)
    os.environ["FALIGN_DATA"] = str(root)  # for train() and for subprocesses
    return root


def has_cifar_jpeg() -> bool:
    return (data_dir() / "cifar10-jpeg.tar.gz").is_file()


def median_ratio(falign: list[float], plain: list[float]) -> float:
    return statistics.median(f / p for f, p in zip(falign, plain, strict=True))


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "img/s":
        return f"{value:.0f} img/s"
    if unit == "%":
        return f"{value:.1f}%"
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def format_rows(rows: list[Row]) -> str:
    lines = ["| benchmark | configuration | plain | falign | ratio | target |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        mark = "" if r.met is None else (" (met)" if r.met else " (**missed**)")
        lines.append(f"| {r.benchmark} | {r.config} | {_fmt(r.plain, r.unit)} | "
                     f"{_fmt(r.falign, r.unit)} | {r.ratio:.3f} | {r.target}{mark} |")
    return "\n".join(lines)
