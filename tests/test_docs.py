"""The documentation: every ```python block of README.md and docs/**/*.md runs (each
page's blocks in order, in one namespace), and the site builds with `mkdocs build
--strict` without a warning.

Only blocks whose info string is exactly `python` run: the brainstate cells shown for
comparison are fenced ```py, and ```python {skip} is there for the rare block that must
not run. Code examples inside docstrings (rendered on the API pages) are not run here.
"""

import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import jax
import pytest
import yaml


ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

# A fenced block whose info string is exactly `python`; the fence may be indented
# (inside an admonition or a list), and the closing fence has the same indentation.
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """`(line number, code)` of the runnable Python blocks of a Markdown page."""
    blocks = []
    for m in FENCE.finditer(text):
        if m.group("info").strip() != "python":
            continue
        line = text.count("\n", 0, m.start("body")) + 1
        blocks.append((line, textwrap.dedent(m.group("body"))))
    return blocks


def long_code_lines(text: str, limit: int = 88) -> list[tuple[int, str]]:
    """`(line number, line)` of the lines of fenced blocks (any language) longer than
    `limit` characters, after removing the block's indentation."""
    long = []
    for m in FENCE.finditer(text):
        first = text.count("\n", 0, m.start("body")) + 1
        for i, line in enumerate(textwrap.dedent(m.group("body")).splitlines()):
            if len(line) > limit:
                long.append((first + i, line))
    return long


def _id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_the_pages_are_found():
    names = {_id(p) for p in PAGES}
    assert {"README.md", "docs/index.md", "docs/tutorial.md", "docs/migration.md"} <= (
        names
    )
    assert sum(len(python_blocks(p.read_text())) for p in PAGES) > 50


def test_fence_parser():
    text = "a\n```python\nx = 1\n```\n\n```python {skip}\nboom\n```\n"
    text += "!!! note\n\n    ```python\n    y = 2\n    ```\n```bash\nls\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (12, "y = 2\n")]


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_code_lines_fit(page):
    """Code blocks fit the page (the site shows about 88 characters) and the README."""
    assert long_code_lines(page.read_text()) == []


def test_long_code_lines():
    text = "```python\nx = 1\n" + "y" * 89 + "\n```\n\n    ```text\n    " + "z" * 88
    text += "\n    ```\n"
    assert long_code_lines(text) == [(3, "y" * 89)]


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    blocks = python_blocks(page.read_text())
    if not blocks:
        return
    monkeypatch.chdir(tmp_path)  # blocks may write files (checkpoints)
    # A real module, so that classes defined in the blocks have a home module.
    name = "docs_page_" + re.sub(r"\W", "_", _id(page))
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    # JAX's default promotion rules, as in a user's script (conftest.py makes the
    # library's own tests strict; optax's Adam, for one, needs the default).
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        _run(page, blocks, module)


def _run(page, blocks, module):
    for line, code in blocks:
        try:
            exec(compile(code, f"{_id(page)}:{line}", "exec"), module.__dict__)
        except Exception as e:
            raise AssertionError(f"{_id(page)}, block at line {line}: {e!r}") from e


def test_no_external_scripts_configured():
    """The site loads no script from elsewhere (no page has maths, so no MathJax)."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    scripts = [str(s) for s in config.get("extra_javascript", [])]
    assert not [s for s in scripts if "//" in s], scripts
    extensions = [e if isinstance(e, str) else next(iter(e)) for e in config.get(
        "markdown_extensions", []
    )]  # fmt: skip
    assert "pymdownx.arithmatex" not in extensions


def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    assert "WARNING" not in log, log
    assert (tmp_path / "index.html").exists()
    assert (tmp_path / "api" / "core" / "index.html").exists()
    # Every script, stylesheet and font the pages load is part of the site.
    for html in tmp_path.rglob("*.html"):
        text = html.read_text()
        sources = re.findall(r"<script[^>]*\ssrc=[\"']?([^\"' >]+)", text)
        sources += re.findall(r"<link[^>]*\shref=[\"']?([^\"' >]+)", text)
        external = [s for s in sources if "//" in s]
        assert not external, (html.relative_to(tmp_path), external)
