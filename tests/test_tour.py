"""The tour, `python -m eqx_collective`: its command line (`--help`, `--list`, sections,
`--quiet`), what it prints, and that it needs none of the optional extras."""

import re
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from eqx_collective import tour


ROOT = Path(__file__).resolve().parent.parent
TITLES = [title for title, _ in tour.SECTIONS.values()]


@pytest.fixture(autouse=True)
def standard_promotion():
    """The suite runs with strict promotion (see conftest.py); the tour runs as a
    user's script would, with JAX's defaults."""
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


def run_tour(capsys, *argv: str) -> str:
    assert tour.main(list(argv)) == 0
    return capsys.readouterr().out


def titles_in(out: str) -> list[str]:
    return re.findall(r"^=== (.*) ===$", out, re.MULTILINE)


def python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_help_from_the_command_line():
    out = python("-m", "eqx_collective", "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m eqx_collective")
    for option in ("--list", "--quiet", "SECTION"):
        assert option in out.stdout
    for name in tour.SECTIONS:
        assert name in out.stdout
    assert "===" not in out.stdout  # --help runs nothing


def test_the_example_script_names_itself_in_its_help():
    out = python("examples/collective_tour.py", "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python examples/collective_tour.py")


def test_list(capsys):
    lines = run_tour(capsys, "--list").splitlines()
    rows = zip(lines, tour.SECTIONS, TITLES, strict=True)
    for i, (line, name, title) in enumerate(rows, 1):
        assert line.split() == [f"{i}.", name, *title.split()]


def test_one_section_by_name_or_number(capsys):
    by_name = run_tour(capsys, "vmap")
    assert titles_in(by_name) == ["Batched initialisation with vmap_*"]
    assert (
        "Weight shape with batching: (8, 4, 64)  [brainstate prints (4, 64): its "
        "parameters never gain the ensemble axis]" in by_name
    )
    number = list(tour.SECTIONS).index("vmap") + 1
    assert run_tour(capsys, str(number)) == by_name


def test_sections_run_in_the_order_given(capsys):
    out = run_tour(capsys, "restore", "1")
    assert titles_in(out) == [tour.SECTIONS["restore"][0], TITLES[0]]


def test_quiet_prints_nothing(capsys):
    assert run_tour(capsys, "--quiet", "restore", "reset") == ""
    assert run_tour(capsys, "-q", "call") == ""


@pytest.mark.parametrize("bad", ["nope", "0", str(len(tour.SECTIONS) + 1)])
def test_an_unknown_section_is_an_error(capsys, bad):
    with pytest.raises(SystemExit) as info:
        tour.main([bad])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"there is no section {bad!r}" in err
    assert "--list" in err


def test_the_whole_tour(capsys):
    out = run_tour(capsys)
    assert titles_in(out) == TITLES
    # Each difference from the tutorial gives brainstate's figure and a reason.
    notes = re.findall(r"\[brainstate prints (.+?)(?:: (.+))?\]$", out, re.MULTILINE)
    assert len(notes) >= 7
    for figure, reason in notes:
        assert figure and (reason or "Chinese" in figure or "same reason" in figure)
    for line in [
        "Order of the init_state calls: ['encoder', 'decoder', '<root>']",
        "Hidden state shape: (2, 32)",
        "Hidden state shape after the reset: (2, 16)  [brainstate prints (16,)",
        "Unexpected keys: []  [brainstate prints",
        "Missing keys: []  [brainstate prints",
        "Restored exactly: True",
        "Ensemble members: 3",
        "Outputs: (12, 4, 8)",
        "(unexpected, missing): ([], [])  [brainstate prints",
        "Hidden state shape: (4, 8)",
    ]:
        assert line in out, line


def test_the_tour_needs_no_extras():
    """With matplotlib, optax and tqdm unimportable (as after `pip install -e .`), the
    tour runs; and `import eqx_collective` imports none of them itself (brainunit,
    a core dependency, imports matplotlib when it is installed)."""
    code = (
        "import sys\n"
        "import brainunit\n"
        "before = set(sys.modules)\n"
        "import eqx_collective\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "assert not new & {'matplotlib', 'optax', 'tqdm', 'hypothesis'}, new\n"
        "for name in ('matplotlib', 'optax', 'tqdm'):\n"
        "    sys.modules[name] = None  # as if not installed\n"
        "from eqx_collective import tour\n"
        "raise SystemExit(tour.main(['--quiet', 'init', 'restore']))\n"
    )
    out = python("-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
