"""A reproduction's report prints a published number beside a run only where the paper
published one."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import mnist_or_skip

from falign.reproduce import reproduce

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dfa_mnist_prints_a_published_number_only_beside_its_own_method(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FALIGN_DATA", str(mnist_or_skip()))
    report = reproduce("dfa-mnist", out=tmp_path / "d", log=lambda s: None)
    lines = (report.parent / "results.txt").read_text().splitlines()
    header = next(line for line in lines if "published test %" in line)
    column = header.index("published test %")
    rows = [line for line in lines if line.startswith(("dfa", "bp")) and len(line) > column]
    loops = [line for line in rows if line.startswith("dfa (dfa-")]
    assert len(loops) == 4, rows
    for line in loops:
        assert line[column:].strip() == "-", line
    others = {line.split()[1].strip("()"): line[column:].strip() for line in rows if line not in loops}
    # the report's own BP twin carries its BP number; falign's like-for-like bp has none
    assert others == {"seed0": "97.23", "bp/seed0": "-", "bp-adam-mse/seed0": "97.24"}, others
