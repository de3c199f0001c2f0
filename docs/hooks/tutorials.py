"""MkDocs hook: every ``docs/tutorials/NAME.py`` (a jupytext percent-format script) becomes the
page ``tutorials/NAME.md``: its ``# %% [markdown]`` cells as prose, its ``# %%`` cells as Python
code blocks, in order, with a link to download the script.

The scripts stay the single source: the test suite runs them as they are
(``tests/test_docs.py``), and the site shows exactly that code. Jupytext reads the format (the
same reader ``jupytext --to notebook`` uses), so a tutorial also opens as a notebook.
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.tutorials")

TUTORIALS = "tutorials/"


def render(text: str, script_name: str) -> str:
    """Markdown of a percent-format script: prose cells verbatim, code cells fenced."""
    import jupytext

    notebook = jupytext.reads(text, fmt="py:percent")
    parts: list[str] = []
    for i, cell in enumerate(notebook.cells):
        source = cell.source.strip("\n")
        if not source.strip():
            continue
        if cell.cell_type == "markdown":
            parts.append(source)
            if i == 0:  # after the title and lead: where the script is and how to run it
                parts.append(
                    f'!!! tip "Run it yourself"\n'
                    f"    This page is the script [`{script_name}`]({script_name}), shown cell by "
                    f"cell. Run it with `python {script_name}`, or open it as a notebook with "
                    f"jupytext (`jupytext --to notebook {script_name}`)."
                )
        elif cell.cell_type == "code":
            parts.append(f"```python\n{source}\n```")
    return "\n\n".join(parts) + "\n"


def on_files(files: Files, config) -> Files:
    scripts = [f for f in files if f.src_uri.startswith(TUTORIALS) and f.src_uri.endswith(".py")]
    for script in scripts:
        page_uri = str(PurePosixPath(script.src_uri).with_suffix(".md"))
        if files.get_file_from_path(page_uri) is not None:
            log.warning("%s: both a page and a tutorial script; the script is not rendered", page_uri)
            continue
        with open(script.abs_src_path, encoding="utf-8") as f:
            text = f.read()
        page = render(text, PurePosixPath(script.src_uri).name)
        files.append(File.generated(config, page_uri, content=page))
    return files
