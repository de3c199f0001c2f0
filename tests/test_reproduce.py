"""Every reproduction runs end to end at smoke scale (the CI check of the whole pipeline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DATA

from falign.reproduce import TARGETS, ReproduceError, reproduce
from falign.training.loop import RunDirError

NEEDS = {"lance-kieu-2026": "cifar10-jpeg.tar.gz"}


@pytest.fixture(autouse=True)
def _data(monkeypatch):
    monkeypatch.setenv("FALIGN_DATA", str(DATA))


@pytest.mark.parametrize("name", list(TARGETS))
def test_smoke(tmp_path: Path, name: str) -> None:
    needed = DATA / NEEDS.get(name, "mnist")
    if not needed.exists():
        pytest.skip(f"{needed} not found")
    lines: list[str] = []
    report = reproduce(name, scale="smoke", out=tmp_path / name, log=lines.append)
    html = report.read_text()
    results = (report.parent / "results.txt").read_text()
    assert "<table" in html and "data:image/png;base64," in html
    assert "SMOKE SCALE" in results
    marker = json.loads((tmp_path / name / "reproduce.json").read_text())
    assert marker["status"] == "completed" and marker["scale"] == "smoke"
    published = {"lance-kieu-2026": "75.80", "biotorch-lenet": "99.09", "dfa-mnist": "97.23",
                  "lillicrap-2016": "97.90"}
    if name in published:  # measured numbers printed beside the published ones
        assert published[name] in results
    if name == "lance-kieu-2026":
        assert "unchanged from the first to the last checkpoint" in results
        assert html.count("<h3>CKA vs BP") == 3 and "<h3>Exemplars" in html
        assert "JPEG" in html
    if name == "dfa-mnist":
        assert "Confusion matrix" in html and "precision" in results
    if name == "sign-tracking":
        assert marker["extra"] and all("tuned_lr" in row for row in marker["extra"])


def test_resume_reuses_finished_runs(tmp_path: Path) -> None:
    out = tmp_path / "dfa"
    reproduce("dfa-mnist", scale="smoke", out=out, log=lambda s: None)
    tracking = out / "compare" / "dfa" / "tracking.json"
    before = tracking.stat().st_mtime_ns
    with pytest.raises(RunDirError):
        reproduce("dfa-mnist", scale="smoke", out=out, log=lambda s: None)
    logged: list[str] = []
    reproduce("dfa-mnist", scale="smoke", out=out, resume=True, log=logged.append)
    assert tracking.stat().st_mtime_ns == before
    assert any("already complete" in line for line in logged)


def test_unknown_target_and_scale(tmp_path: Path) -> None:
    with pytest.raises(ReproduceError, match="did you mean 'dfa-mnist'"):
        reproduce("dfa-mnis", out=tmp_path)
    with pytest.raises(ReproduceError, match="scale"):
        reproduce("dfa-mnist", scale="huge", out=tmp_path)
