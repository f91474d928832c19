"""Benchmark: checkpoint files, `save_states` / `load_states` (safetensors), against
Equinox's own `eqx.tree_serialise_leaves` / `eqx.tree_deserialise_leaves`, and
`save_sharded` / `load_sharded` (orbax) on a sharded ensemble.

- The file rows time a model holding `N` `ParamState`s with `{'weight', 'bias'}` values
  (N = 400 by default: 800 arrays), written to and read from a temporary directory, in
  the same run with interleaved repeats; `ratio` is Equinox's time over ours (> 1: we
  are faster). `load_states` includes everything it does: reading and checking the
  file, moving the arrays to the device, and `assign_state_values` with its checks.
  Targets: `save_states` at most 0.5x and `load_states` at most 0.25x of Equinox's
  time.
- The sharded rows (no reference: reported only) run in a separate process with 8
  simulated CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`): an
  ensemble of 16 MLPs sharded over them with `ec.shard_ensemble`, saved with
  `save_sharded` and restored into its shardings with `load_sharded`.

Run as `python benchmarks/bench_checkpoint.py [--quick]` (`--quick`: tiny sizes, a
smoke run for CI), or call `run(quick)` to get the rows.
"""

import json
import os
import subprocess
import sys
import tempfile

import equinox as eqx
import jax
import numpy as np

import eqx_collective as ec


try:
    from _common import interleaved_medians, many_states, row
except ImportError:  # imported as `benchmarks.bench_checkpoint`
    from ._common import interleaved_medians, many_states, row

SAVE_TARGET = 0.5
LOAD_TARGET = 0.25


def _file_rows(quick: bool) -> list[dict]:
    n, size, repeats = (8, 2, 3) if quick else (400, 4, 25)
    model = many_states(n, size)

    def check(result):
        assert not result.unexpected and not result.missing
        return jax.block_until_ready(result.model)

    with tempfile.TemporaryDirectory() as tmp:
        ours = os.path.join(tmp, "states.safetensors")
        theirs = os.path.join(tmp, "leaves.eqx")
        fns = [
            lambda: ec.save_states(ours, model),
            lambda: eqx.tree_serialise_leaves(theirs, model),
            lambda: check(ec.load_states(ours, model)),
            lambda: jax.block_until_ready(eqx.tree_deserialise_leaves(theirs, model)),
        ]
        save, ref_save, load, ref_load = interleaved_medians(fns, repeats)
        loaded = ec.load_states(ours, model).model
        for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(model), strict=True):
            assert np.array_equal(a, b)

    def target(what, ours, ref, limit):
        return (
            f"checkpoint ({what}): <= {limit:g}x the time of eqx.tree_{what}_leaves",
            ours <= limit * ref,
        )

    return [
        row(
            "checkpoint",
            f"save_states ({n} states, {2 * n} arrays)",
            save,
            "eqx.tree_serialise_leaves",
            ref_save,
            f"{save / ref_save:.2f}x of Equinox's time",
            target("serialise", save, ref_save, SAVE_TARGET),
        ),
        row(
            "checkpoint",
            f"load_states ({n} states, {2 * n} arrays)",
            load,
            "eqx.tree_deserialise_leaves",
            ref_load,
            f"{load / ref_load:.2f}x of Equinox's time",
            target("deserialise", load, ref_load, LOAD_TARGET),
        ),
    ]


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
