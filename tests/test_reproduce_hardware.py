"""The hardware-feedback target's plan (falign.reproduce.hardware_feedback): its grid, one key a
run, the units of the evidence queue and their size; the final angle it reports; the docs
section it writes.  Its smoke run is in tests/test_reproduce.py."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from falign.records.run import AlignmentRecord
from falign.reproduce import TARGETS
from falign.reproduce.base import plan
from falign.reproduce.hardware_feedback import (
    BEGIN,
    END,
    MNIST_AXES,
    ONE_PER_ROW,
    crafton_config,
    estimate,
    final_angle,
    hardware_feedback,
    mnist_config,
    rewrite,
    section,
)
from falign.rules.hardware import density_mask

NAME = "hardware-feedback"


@pytest.fixture(scope="module")
def units():
    return plan(TARGETS[NAME])


def test_the_grid_is_the_issues(units) -> None:
    """Per rule and seed on MNIST: the ideal run, rank 256/64/16/4, density 0.5/0.1/one a row,
    levels 16/4/3/2, variation and read noise 0.05/0.2/0.5; DFA's error levels with sdfa beside
    them; the CNN's levels and density; Crafton et al.'s dense and sparse DFA."""
    runs = [r for u in units for r in u.run_dirs]
    assert len(units) == 47 and len(runs) == 135 and len(set(runs)) == len(runs)
    by_part = Counter(u.part for u in units)
    assert by_part["mnist-ideal"] == 6 and by_part["mnist-error_levels"] == 3
    assert all(by_part[f"mnist-{a}"] == 6 for a in MNIST_AXES if a != "error_levels")
    assert "mnist-rank/fa/256/seed2" in runs and "mnist-density/dfa/1-per-row/seed0" in runs
    assert "mnist-error_levels/sdfa/2/seed1" in runs and "mnist-error_levels/dfa/2/seed1" in runs
    assert "mnist-error_levels/dfa/3/seed1" in runs  # ternary e (error_threshold 0.1)
    assert {u.name for u in units if u.part.startswith("cifar")} == {
        f"cifar-{p}/{r}/seed42" for p in ("ideal", "levels", "density") for r in ("fa", "dfa")}
    assert [u.name for u in units if u.part == "crafton-mnist"] == [
        "crafton-mnist/dfa", "crafton-mnist/dfa-1-per-row"]


def test_every_run_sets_one_key_at_its_value(tmp_path, monkeypatch) -> None:
    """The configs the units train, read from a planning pass that records them."""
    from falign.reproduce.base import Context, _Stop

    seen = {}

    def collect(self, runs, *, part, method, seed=None):
        seen.update(runs)
        return []

    monkeypatch.setattr(Context, "train_runs", collect)
    ctx = Context(out=tmp_path, scale="full", resume=True, log=lambda s: None, planning=True)
    with pytest.raises(_Stop):  # planning stops at ctx.trained()
        hardware_feedback(ctx)
    assert len(seen) == 135
    for rel, cfg in seen.items():
        part, rule = rel.split("/")[:2]
        hardware = cfg.rule.options.get("hardware")
        hardware = {} if hardware is None else (hardware if isinstance(hardware, dict)
                                                else hardware.to_dict())
        if part.endswith("-ideal") or rule == "sdfa" or rel == "crafton-mnist/dfa":
            assert hardware == {}, rel
            continue
        assert len(hardware) == 1, rel
        if part.startswith("mnist"):
            axis = MNIST_AXES[part.split("-", 1)[1]]
            (key, value), = hardware.items()
            assert key == axis.key and axis.label(value) == rel.split("/")[2]
    mlp = seen["mnist-rank/fa/4/seed0"]
    assert mlp.model.options["sizes"] == [784, 1000, 1000, 10] and mlp.optim.name == "adam"
    assert mlp.seed == 0 and seen["mnist-rank/fa/4/seed2"].seed == 2
    cnn = seen["cifar-levels/fa/2/seed42"]
    assert cnn.model.name == "arch1" and cnn.data.name == "cifar10-jpeg" and cnn.train.epochs == 15
    assert cnn.rule.options["scale"] == 0.1


def test_one_per_row_keeps_one_entry_in_every_row_of_every_layer() -> None:
    for n in (10, 400, 1000, 3072):
        assert density_mask((7, n), ONE_PER_ROW, seed=3).sum(1).tolist() == [1] * 7


def test_the_protocols_follow_their_sources() -> None:
    """MNIST: the rule guide's best setting of FA and DFA; Crafton et al.: their code's."""
    cfg = mnist_config(smoke=False)
    assert (cfg.optim.name, cfg.optim.lr, cfg.train.batch_size, cfg.train.epochs) == ("adam", 1e-3, 128, 20)
    # the probe every steps - 1: one an epoch, the last one inside the final epoch
    steps = 430  # 55,000 training images in batches of 128
    assert cfg.train.alignment_every == steps - 1
    last = cfg.train.alignment_every * (steps * cfg.train.epochs // cfg.train.alignment_every)
    assert steps * (cfg.train.epochs - 1) <= last < steps * cfg.train.epochs
    c = crafton_config(smoke=False)
    assert c.model.options["sizes"] == [784, 400, 10] and c.model.options["activation"] == "tanh"
    assert (c.train.batch_size, c.train.epochs, c.train.select_on) == (32, 300, "test")
    assert c.rule.options["scale"] == pytest.approx(0.05 / 3 ** 0.5, rel=1e-3)  # std of U(+-0.05)


def test_no_unit_is_longer_than_two_and_a_half_hours_of_one_core() -> None:
    est = estimate()
    assert {g: e["runs"] for g, e in est.items()} == {"mnist": 117, "cifar": 16, "crafton-mnist": 2}
    assert all(e["longest_unit_hours"] <= 2.5 for e in est.values())


def test_the_final_angle_is_the_mean_of_the_hidden_layers_at_the_last_probe() -> None:
    probes = [AlignmentRecord(0, 1, {"a": {"update_angle": 80.0}, "b": {"update_angle": 70.0},
                                     "out": {"update_angle": 0.0}}),
              AlignmentRecord(9, 2, {"a": {"update_angle": 40.0}, "b": {"update_angle": 20.0},
                                     "out": {"update_angle": 0.0}}),
              AlignmentRecord(18, 3, {})]  # a probe that measured nothing is passed over
    assert final_angle(SimpleNamespace(alignment=probes)) == pytest.approx(30.0)
    assert final_angle(SimpleNamespace(alignment=[])) is None


def test_the_docs_section_replaces_only_its_markers_and_says_what_is_missing() -> None:
    block = section(None, {}, {"dfa": {"test_acc": None, "published": None}}, {})
    assert block.startswith(BEGIN) and block.endswith(END)
    assert "not measured yet" in block and "not found" in block and "135 runs in 47 units" in block
    page = f"# Title\n\ntext\n\n{BEGIN}\nSTALE-SECTION\n{END}\n\n## After\n"
    new = rewrite(page, block)
    assert new.startswith("# Title\n\ntext\n\n") and new.endswith("\n\n## After\n")
    assert "STALE-SECTION" not in new
    assert rewrite("# T\n", block) == f"# T\n\n{block}\n"

