"""Benchmark: checkpoint files, `save_states` / `load_states` (safetensors), against
their floor and Equinox, and `save_sharded` / `load_sharded` (orbax) on a sharded
ensemble.

- Speed (same run, interleaved repeats): `save_states` against
    `eqx.tree_serialise_leaves` (target: at most 0.5x its time), and `load_states`
    against its **floor**: reading the file with `safetensors.numpy.load_file` plus one
    `jax.device_put` of all its arrays (targets: within 1.2x of it on a model of 400
    `ParamState`s with `{'weight', 'bias'}` values, 800 arrays; within 1.1x on a big
    model). `load_states` includes everything it does: reading and checking the file,
    moving the arrays to the device, and the checks and rebuild of
    `assign_state_values`.
- Memory: the peak resident memory of a fresh process loading a checkpoint, above
    what it held before building the template (`/proc/self/status`), as a multiple of
    the model's size, with a concrete template (target: at most 2x: the template and
    the loaded model) and with an `eqx.filter_eval_shape` template (target: at most
    1.3x). What it held before includes JAX's start-up and the compiled operations
    that build the template (built once on a one-state model): one-time costs of the
    process, about 23 MB, not of the load.
- The big model is ~100 MB by default and ~400 MB with `--full`.
- The sharded rows (no reference: reported only) run in a separate process with 8
    simulated CPU devices: an ensemble of 16 MLPs sharded over them with
    `ec.shard_ensemble`, saved with `save_sharded` and restored into its shardings
    with `load_sharded`.

Run as `python benchmarks/bench_checkpoint.py [--quick] [--full]` (`--quick`: tiny
sizes, a smoke run for CI), or call `run(quick)` to get the rows.
"""

import json
import os
import subprocess
import sys
import tempfile

import equinox as eqx
import jax
import numpy as np
import safetensors.numpy

import eqx_collective as ec


try:
    from _common import interleaved_medians, many_states, row
except ImportError:  # imported as `benchmarks.bench_checkpoint`
    from ._common import interleaved_medians, many_states, row

SAVE_TARGET = 0.5
LOAD_TARGETS = (1.2, 1.1)  # x the floor: the 800-array model, the big model
MEMORY_TARGETS = {"concrete": 2.0, "abstract": 1.3}
FULL = "--full" in sys.argv  # (read before `run.cli` parses the rest)
if FULL:
    sys.argv.remove("--full")


def _big_model(quick: bool) -> tuple[int, int]:
    """`(n, size)` of the big model: `n` states of a `size x size` float32 weight."""
    if quick:
        return 4, 64
    return (200, 700) if FULL else (50, 700)  # ~400 MB or ~100 MB


def _timed_rows(quick: bool) -> list[dict]:
    rows = []
    small = (8, 2, 3) if quick else (400, 4, 25)
    big = (*_big_model(quick), 3 if quick else 5)
    for k, (n, size, repeats) in enumerate((small, big)):
        model = many_states(n, size)
        mb = sum(x.nbytes for x in jax.tree.leaves(model)) / 2**20
        with tempfile.TemporaryDirectory() as tmp:
            ours = os.path.join(tmp, "states.safetensors")
            theirs = os.path.join(tmp, "leaves.eqx")
            ec.save_states(ours, model)

            def floor():
                arrays = safetensors.numpy.load_file(ours)
                jax.block_until_ready(jax.device_put(list(arrays.values())))

            fns = [
                lambda: jax.block_until_ready(ec.load_states(ours, model).model),
                floor,
                lambda: ec.save_states(ours, model),
                lambda: eqx.tree_serialise_leaves(theirs, model),
            ]
            load, ref_load, save, ref_save = interleaved_medians(fns, repeats)
        what = f"{n} states, {2 * n} arrays, {mb:.0f} MiB"
        limit = LOAD_TARGETS[k]
        rows.append(
            row(
                "checkpoint",
                f"load_states ({what})",
                load,
                "floor: safetensors read + one device_put",
                ref_load,
                f"{load / ref_load:.2f}x of the floor",
                (
                    f"checkpoint load ({what}): <= {limit:g}x the floor",
                    load <= limit * ref_load,
                ),
            )
        )
        if k == 0:
            rows.append(
                row(
                    "checkpoint",
                    f"save_states ({what})",
                    save,
                    "eqx.tree_serialise_leaves",
                    ref_save,
                    f"{save / ref_save:.2f}x of Equinox's time",
                    (
                        f"checkpoint save: <= {SAVE_TARGET:g}x eqx.tree_serialise_leaves",
                        save <= SAVE_TARGET * ref_save,
                    ),
                )
            )
    return rows


_CHILD = """
import sys, jax, equinox as eqx
sys.path.insert(0, {here!r})
import eqx_collective as ec
from _common import many_states

def status(key):  # in bytes, from the kernel's accounting of this process
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(key + ":"))
    return int(line.split()[1]) * 1024

make = lambda: many_states({n}, {size})
# one-time costs that are not the load's: JAX's start-up, and compiling the template's
# own operations (an abstract template traces them too), done on a one-state model
jax.block_until_ready(many_states(1, {size}))
eqx.filter_eval_shape(lambda: many_states(1, {size}))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from here
base = status("VmRSS")
model = make() if {concrete} else eqx.filter_eval_shape(make)
out = jax.block_until_ready(ec.load_states({file!r}, model).model)
print(status("VmHWM") - base)
"""


def _peak(n: int, size: int, template: str) -> dict:
    """The peak resident memory of one load in a fresh process, above what it held
    before building the template (Linux: `/proc/self/status`)."""
    with tempfile.TemporaryDirectory() as tmp:
        file = os.path.join(tmp, "m.safetensors")
        model = many_states(n, size)
        nbytes = sum(x.nbytes for x in jax.tree.leaves(model))
        ec.save_states(file, model)
        del model
        child = _CHILD.format(
            here=os.path.dirname(os.path.abspath(__file__)),
            n=n,
            size=size,
            concrete=template == "concrete",
            file=file,
        )
        out = subprocess.run(
            [sys.executable, "-c", child], capture_output=True, text=True, check=True
        )
    return {"peak": float(out.stdout.split()[-1]), "nbytes": nbytes}


def _memory_rows(quick: bool) -> list[dict]:
    n, size = _big_model(quick)
    rows = []
    for template, limit in MEMORY_TARGETS.items():
        got = _peak(n, size, template)
        ratio = got["peak"] / got["nbytes"]
        mb = got["nbytes"] / 2**20
        rows.append(
            row(
                "checkpoint",
                f"load_states peak memory ({template} template, {mb:.0f} MiB model)",
                0.0,
                note=f"{ratio:.2f}x the model's size above the baseline",
                target=(
                    f"checkpoint memory ({template} template): <= {limit:g}x the model",
                    None if quick else ratio <= limit,
                ),
            )
        )
    return rows


def _file_rows(quick: bool) -> list[dict]:
    return _timed_rows(quick) + _memory_rows(quick)


def _sharded_times(quick: bool) -> dict:
    """Runs in the child process with 8 devices: the sharded save and load times."""
    import time

    from eqx_collective import nn

    members, width, repeats = (8, 4, 1) if quick else (16, 256, 3)
    assert jax.device_count() == 8, jax.devices()

    def make(key):
        k1, k2 = jax.random.split(key)
        return nn.Sequential(
            nn.Linear(width, width, key=k1), nn.Linear(width, 1, key=k2)
        )

    mesh = jax.sharding.Mesh(jax.devices(), ("ensemble",))
    ensemble = ec.shard_ensemble(
        ec.make_ensemble(make, jax.random.key(0), members), mesh
    )
    target = ec.shard_ensemble(ec.make_ensemble(make, jax.random.key(1), members), mesh)
    saves, loads = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ckpt")
        for _ in range(repeats + 1):  # the first round warms up
            t0 = time.perf_counter()
            ec.save_sharded(path, ensemble)
            saves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            jax.block_until_ready(ec.load_sharded(path, target).model)
            loads.append(time.perf_counter() - t0)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(ensemble))
    return {
        "save": float(np.median(saves[1:])),
        "load": float(np.median(loads[1:])),
        "members": members,
        "mb": nbytes / 2**20,
    }


def _sharded_rows(quick: bool) -> list[dict]:
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        f"import sys, json; sys.path.insert(0, {here!r}); import bench_checkpoint as b; "
        f"print(json.dumps(b._sharded_times({quick!r})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the sharded checkpoint benchmark failed:\n{proc.stderr}")
    t = json.loads(proc.stdout.strip().splitlines()[-1])
    what = f"{t['members']}-member ensemble, {t['mb']:.1f} MiB, 8 devices"
    return [
        row("checkpoint", f"save_sharded (orbax; {what})", t["save"]),
        row("checkpoint", f"load_sharded (orbax; {what})", t["load"]),
    ]


def run(quick: bool = False) -> list[dict]:
    """Runs the benchmark.

    **Arguments:**

    - `quick`: tiny sizes and few repeats (a smoke run).

    **Returns:** the rows, in the format of `_common.row`.
    """
    return _file_rows(quick) + _sharded_rows(quick)


if __name__ == "__main__":
    from run import cli

    cli(run, __doc__)
