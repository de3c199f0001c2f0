"""The shipped examples run and check what they claim."""

from __future__ import annotations

import runpy
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_xor_example_learns_and_matches_the_hand_written_rule(capsys) -> None:
    main = runpy.run_path(str(EXAMPLES / "xor.py"))["main"]
    assert main() == 0
    out = capsys.readouterr().out
    assert "equals (d_logits @ B) * relu'(a) rule: True" in out
    assert "FA learned XOR: True" in out
