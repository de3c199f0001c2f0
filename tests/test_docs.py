"""The documentation site: every tutorial runs as written, ``mkdocs build --strict`` passes, and
the nav and the pages agree.

The tutorials are the scripts under ``docs/tutorials/`` that the site shows cell by cell; each
runs here in a subprocess, from an empty working directory, exactly as a reader runs it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import DATA, ONE_THREAD, mnist_or_skip

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIALS = sorted((DOCS / "tutorials").glob("*.py"))

#: lines a tutorial prints when what it shows is true (beyond running without an error)
EXPECTED = {
    "convert_and_train.py": ["same forward: True", "h2 receives e @ B:   True", "h2 would get e @ W:  False",
                             "exact_backward == plain backprop: True"],
    "reproduce_a_result.py": ["published test %", "status: completed"],
    "analyse_a_run.py": ["alignment records", "Grad-CAM maps: (8, 28, 28)", "update_angle.png"],
    "hardware_feedback.py": ["connections per hidden unit: [2] of 4",
                             "backward reads effective_feedback(): True", "levels of B: 3",
                             "feedback points the tile served: ['2', '4']",
                             "optical B of the last layer's input: (64, 4)"],
    "write_a_rule.py": ["contract suite: passed", "check_rule failed, as it should",
                        "B's direction unchanged: cosine(B, B at start) = 1.0000",
                        "completed: test accuracy"],
}


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, **ONE_THREAD, "FALIGN_DATA": str(DATA), "TMPDIR": str(tmp),
            "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(tmp / "mpl"), "PYTHONUNBUFFERED": "1"}


def test_every_tutorial_has_an_expectation() -> None:
    assert TUTORIALS, "no tutorials under docs/tutorials"
    assert sorted(EXPECTED) == sorted(t.name for t in TUTORIALS)


@pytest.mark.parametrize("script", TUTORIALS, ids=[t.stem for t in TUTORIALS])
def test_tutorial_runs_as_written(script: Path, tmp_path: Path) -> None:
    if '"mnist"' in script.read_text(encoding="utf-8"):
        mnist_or_skip()
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    run = subprocess.run(
        [sys.executable, "-c", "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')",
         str(script)],
        cwd=cwd, env=_env(tmp), capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, f"{script.name} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    for line in EXPECTED[script.name]:
        assert line in run.stdout, f"{script.name}: {line!r} not in its output:\n{run.stdout[-3000:]}"
    assert not any(cwd.iterdir()), f"{script.name} wrote into its working directory: {list(cwd.iterdir())}"
    left = [p.name for p in tmp.iterdir() if p.name.startswith("falign-")]
    assert not left, f"{script.name} left its temporary directories behind: {left}"


# -- the site -------------------------------------------------------------------------------------

def _nav_pages(nav) -> list[str]:
    """Every page path of an mkdocs nav, in order."""
    pages: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            pages += _nav_pages(value)
        elif not str(value).startswith(("http://", "https://")):
            pages.append(str(value))
    return pages


def _config() -> dict:
    # mkdocs.yml holds no custom YAML tags, so the safe loader reads it
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def _source(page: str) -> Path:
    """The file a nav page is made from: the Markdown page, or the tutorial script rendered into it."""
    md = DOCS / page
    return md if md.exists() else md.with_suffix(".py")


def test_every_nav_page_exists_and_every_page_is_in_the_nav() -> None:
    pages = _nav_pages(_config()["nav"])
    missing = [p for p in pages if not _source(p).is_file()]
    assert not missing, f"pages in the nav with no file under docs/: {missing}"
    assert len(pages) == len(set(pages)), "a page appears twice in the nav"
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if "hooks" not in p.parts}
    on_disk |= {str(t.relative_to(DOCS).with_suffix(".md")) for t in TUTORIALS}
    assert sorted(on_disk - set(pages)) == [], "pages under docs/ that the nav does not list"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT, env={**os.environ, **ONE_THREAD, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    return out


def test_site_builds_strict_with_every_nav_page(site: Path) -> None:
    for page in _nav_pages(_config()["nav"]):
        stem = page.removesuffix(".md")
        folder = "" if stem == "index" else stem.removesuffix("/index")  # use_directory_urls
        html = site / folder / "index.html"
        assert html.is_file(), f"{page}: no {html.relative_to(site)} in the built site"


def test_site_shows_the_tutorials_and_the_generated_reference(site: Path) -> None:
    for script in TUTORIALS:
        html = (site / "tutorials" / script.stem / "index.html").read_text(encoding="utf-8")
        assert "language-python" in html or 'class="highlight"' in html, f"{script.name}: no code on its page"
        assert (site / "tutorials" / script.name).is_file(), f"{script.name}: not downloadable from the site"
    config = (site / "config" / "index.html").read_text(encoding="utf-8")
    keys = ("train.alignment_every", "optim.lr", "data.subset", "compare[].set", "sweep.rules.&lt;rule&gt;")
    for key in keys:
        assert key in config, f"config reference: {key} missing"
    assert "falign:config" not in config, "a config marker was left unrendered"
    rules = (site / "api" / "rules" / "index.html").read_text(encoding="utf-8")
    import falign

    for name in falign.rules():
        assert f"<code>{name}</code>" in rules, f"rules registry page: rule {name} missing"
    api = (site / "api" / "convert" / "index.html").read_text(encoding="utf-8")
    assert "example_input" in api, "falign.convert's signature is not on the API page"
