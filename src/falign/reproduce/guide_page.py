"""The docs page "Choosing a rule", made from the rule guide's committed summary.

    python -m falign.reproduce.guide_page results/ --write docs/choosing-a-rule.md \
        --figure docs/figures/rule-guide.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..records import ReproductionSummary
from .guide import figure, load_check, page


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m falign.reproduce.guide_page",
                                description=__doc__.splitlines()[0])
    p.add_argument("results", help="the folder holding rule-guide.json")
    p.add_argument("--write", help="write the page here (Markdown)")
    p.add_argument("--figure", help="draw the figure here (PNG); the page links it relative to --write")
    args = p.parse_args(argv)
    summary = ReproductionSummary.load(Path(args.results) / "rule-guide.json")
    link = None
    if args.figure:
        drawn = figure(summary, Path(args.figure))
        if drawn is not None and args.write:
            import os

            link = os.path.relpath(drawn, Path(args.write).parent)
    text = page(summary, link, load_check(Path(args.results)))
    if args.write:
        Path(args.write).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
