"""The examples in `examples/` run and do what they say, on small settings."""

import importlib.util
import io
import os
import subprocess
import sys
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    """Imports `examples/<name>.py` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"eqx_collective_example_{name}", EXAMPLES / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def standard_promotion():
    """The suite runs with strict dtype promotion (see conftest.py), but optax's Adam
    computes `b1 ** count` with a Python float and an int32 count, which strict
    promotion refuses; the examples run with JAX's default, as a user would."""
    with jax.numpy_dtype_promotion("standard"):
        yield


def check_png(path: Path) -> None:
    """`path` is a complete PNG: signature, IHDR first, IEND last, valid CRCs."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        crc = int.from_bytes(data[pos + 8 + length : pos + 12 + length], "big")
        assert len(body) == length and zlib.crc32(kind + body) == crc
        chunks.append(kind)
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    width, height = (
        int.from_bytes(data[16 + 4 * i : 20 + 4 * i], "big") for i in (0, 1)
    )
    assert width > 100 and height > 100


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_train_rnn(standard_promotion, capsys, monkeypatch):
    example = load_example("train_rnn")
    # In a terminal, a progress bar with the loss replaces the log lines.
    terminal = Terminal()
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(sys, "stderr", terminal)
    result = example.main(60, hidden_size=16, seq_len=12, batch_size=16, log_every=20)
    bar = terminal.getvalue().split("\r")[-1]
    assert bar.startswith("training: 100%") and "60/60" in bar
    assert f"loss={result['last_loss']:.5f}" in bar
    assert "step " not in capsys.readouterr().out
    assert len(result["losses"]) == 60
    assert np.all(np.isfinite(result["losses"]))
    assert result["last_loss"] < 0.5 * result["first_loss"]
    # The trained model still carries its batched hidden state.
    assert result["model"].layers[0].h.value.shape == (16, 16)


def test_train_ensemble(standard_promotion, tmp_path, monkeypatch, capsys):
    example = load_example("train_ensemble")
    monkeypatch.chdir(tmp_path)  # the default plot path is in the current directory
    result = example.main(
        40,
        members=4,
        hidden_size=16,
        seq_len=16,
        batch_size=8,
        eval_every=10,
        log_every=20,
    )
    out, err = capsys.readouterr()
    # Not a terminal: a log line every `log_every` steps instead of a progress bar.
    steps = [int(line.split()[1]) for line in out.splitlines() if line[:5] == "step "]
    assert steps == [0, 20, 39]
    assert "%|" not in err
    first, last = result["first_losses"], result["last_losses"]
    assert first.shape == last.shape == (4,)
    assert result["losses"].shape == (40, 4)
    assert np.all(last < 0.5 * first), (first, last)
    # Members start from different weights and see different data.
    assert len(set(first.tolist())) == 4
    assert np.all(np.isfinite(result["test_losses"]))
    # Held-out sequences, scored every `eval_every` steps and after the last.
    assert result["held_out_steps"].tolist() == [0, 10, 20, 30, 39]
    held_out = result["held_out_losses"]
    assert held_out.shape == (5,) and np.all(np.isfinite(held_out))
    assert held_out[-1] < 0.5 * held_out[0]
    assert result["ensemble_test_loss"] == held_out[-1]
    plot = tmp_path / "ensemble_losses.png"
    assert Path(result["plot"]).resolve() == plot.resolve()
    check_png(plot)


def test_checkpoint(tmp_path, capsys):
    example = load_example("checkpoint")
    result = example.main(
        str(tmp_path), members=2, hidden_size=4, steps=3, verbose=False
    )
    assert capsys.readouterr() == ("", "")  # quiet
    assert result["single_exact"]
    assert result["partial_exact"]
    assert result["ensemble_exact"]
    assert result["all_exact"]
    assert result["mismatch_refused"]
    assert result["partial_missing"] == [("layers", 2, "weight", "weight")]
    assert result["partial_unexpected"] == [("layers", 2, "weight", "weight")]
    for path in result["files"].values():
        assert Path(path).parent == tmp_path and Path(path).is_file()


@pytest.mark.parametrize("name", ["train_rnn", "train_ensemble"])
def test_progress_bar_only_for_a_person_watching(name, monkeypatch):
    show = load_example(name).show_progress_bar
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not show(True)  # a log file, a pipe, a test
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert show(True)
    assert not show(False)  # --quiet
    monkeypatch.setenv("CI", "true")
    assert not show(True)


@pytest.mark.parametrize("name", ["train_rnn", "train_ensemble", "checkpoint"])
def test_runs_as_a_script(name):
    """`python examples/<name>.py --help` works from the repository root, and shows
    every option's default."""
    # The examples import this checkout's `eqx_collective`, as when it is installed.
    pythonpath = os.pathsep.join(
        filter(None, [str(EXAMPLES.parent), os.getenv("PYTHONPATH")])
    )
    out = subprocess.run(
        [sys.executable, f"examples/{name}.py", "--help"],
        cwd=EXAMPLES.parent,
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    for option in ("--quick", "--quiet", "(default: "):
        assert option in out.stdout
    defaults = vars(load_example(name).parse_args([]))
    assert out.stdout.count("(default: ") == len(defaults)
