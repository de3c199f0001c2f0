"""The contract suite (``falign.testing``) over every registered rule, in CI on every commit.

Tiny float64 shapes keep it fast; the two-process check runs one torchrun pair per rule."""

from __future__ import annotations

import pytest
import torch

import falign
import falign.testing as contract
from falign.rules import DirectRule

pytestmark = pytest.mark.usefixtures("one_thread")

#: every registered rule, and the variants with an option that changes the pathway
SPECS = [(name, {}) for name in falign.rules()] + [("fa", {"conv_feedback": "dense"})]


def _hardware(name: str) -> dict | None:
    """A representative device for a rule (falign.rules.hardware): few levels, sparse and
    varying B; low rank and binary errors where the rule projects the output error."""
    rule = falign.get_rule(name)
    if rule.exact:
        return None  # backprop has no feedback to transform
    if isinstance(rule, DirectRule):
        return {"b_rank": 2, "b_levels": 3, "error_levels": 2}
    return {"b_levels": 4, "b_density": 0.5, "b_noise": 0.05}


#: ... and each with a representative hardware model of its feedback path
SPECS += [(name, {"hardware": hw}) for name in falign.rules() if (hw := _hardware(name)) is not None]
#: ... and each direct rule through the simulated optical co-processor, fed ternary errors (exact
#: intensities, so that its backward meets the formula with the P effective_feedback() returns)
OPTICAL = {"error_levels": 3, "error_threshold": 0.5, "optical": {"bits": None}}
SPECS += [(name, {"hardware": OPTICAL}) for name in falign.rules()
          if isinstance(falign.get_rule(name), DirectRule)]


def spec_id(spec) -> str:
    name, opts = spec
    return name + "".join(("[optical]" if "optical" in v else "[hardware]") if k == "hardware"
                          else f"[{k}={v}]" for k, v in opts.items())


@pytest.mark.parametrize("case", contract.LAYER_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_forward_local_gradients_and_pathway_formula(spec, case) -> None:
    contract.check_forward(spec[0], spec[1], case)


@pytest.mark.parametrize("check", [c for c in contract.CHECKS if c != "processes"])
@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_contract(spec, check) -> None:
    if check == "compile":
        torch._dynamo.reset()
    contract.CHECKS[check](spec[0], spec[1])


@pytest.fixture(scope="module")
def two_process_results() -> dict[str, str | None]:
    """One torchrun launch for every rule (a launch costs seconds, a rule's run milliseconds)."""
    return dict(zip(map(spec_id, SPECS), contract.compare_processes(SPECS), strict=True))


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_two_processes_equal_one(spec, two_process_results) -> None:
    problem = two_process_results[spec_id(spec)]
    assert problem is None, problem


@pytest.mark.parametrize("case", [contract.LAYER_CASES[0], contract.LAYER_CASES[3]], ids=lambda c: c.id)
def test_the_suite_catches_a_backward_that_does_not_use_the_reported_b(monkeypatch, case) -> None:
    from falign.layers.pathways.kernel import Kernel

    original = Kernel.effective
    monkeypatch.setattr(Kernel, "effective", lambda self, layer: 2 * original(self, layer))
    with pytest.raises(AssertionError, match="input gradient"):
        contract.check_forward("fa", {}, case)


def test_the_suite_catches_a_non_local_weight_gradient(monkeypatch) -> None:
    from falign.layers.pathways import _ops

    original = _ops.linear_weight_grads

    def wrong(g, x, w, need_w, need_b):
        gw, gb = original(g, x, w, need_w, need_b)
        return (None if gw is None else gw * 1.01), gb

    monkeypatch.setattr("falign.layers.pathways.kernel.linear_weight_grads", wrong)
    with pytest.raises(AssertionError, match="local"):
        contract.check_forward("fa", {}, contract.LAYER_CASES[0])
