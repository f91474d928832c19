"""Benchmark: ensembles.

1. `ec.vmap_init_all_states(model, axis_size=E, key=...)` for E = 8, 64, 1024 members
   of `Sequential(Linear(16, 32), ReLU(), ValinaRNNCell(32, 32), Linear(32, 4))`,
   against brainstate's `vmap_init_all_states` on the equivalent brainstate model.
   Memory is reported two ways: the exact size of the result (sum of `nbytes` of its
   arrays: ours has every parameter batched, brainstate 0.5.4 batches only the states
   created in `init_state` (here the hidden state `h`) and leaves the parameters
   unbatched, so its result is smaller and not an ensemble of independent members),
   and, for ours, the growth of the process's peak RSS
   (`resource.getrusage(...).ru_maxrss`, a high-water mark) over the first call at
   that size, sizes in ascending order (it includes tracing and JAX's caches, so read
   it as an upper bound; `jax.devices()[0].memory_stats()` is `None` on CPU, and
   brainstate's call runs after ours, under a high-water mark ours already raised, so
   no RSS figure is given for it).
2. The forward pass of a 64-member ensemble of an MLP
   `Sequential(Linear(16, 64), ReLU(), Linear(64, 64), ReLU(), Linear(64, 4))` on a
   batch of 32: `eqx.filter_vmap` (with `in_axes=ec.ensemble_in_axes(ensemble)`) under
   `eqx.filter_jit`, against a Python loop over `ec.unstack(ensemble)` calling each
   member's forward under `eqx.filter_jit` (compiled once, the members share their
   structure). Steady state (median of interleaved repeats) and first call (trace +
   compile + run, fresh functions). Also, for reference, the loop with the
   low-overhead dispatch pattern of `bench_dispatch.py` (`jax.jit` on flat leaves).

3. The same forward pass of a 64-member ensemble sharded with `ec.shard_ensemble`
   over 8 simulated CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`,
   in a subprocess), against the unsharded ensemble on one device: a report, no
   target (simulated devices share this machine's two cores).

Rows 1 also compare `vmap_init_all_states` (members replicate the parameters) with
building independently initialised members (`make_ensemble`, then
`vmap_init_all_states` on the ensemble to create their states).

Target: the vmapped forward >= 10x faster than the loop.

Run as `python benchmarks/bench_ensemble.py [--quick]`, or call `run(quick)`.
"""

import json
import os
import resource
import statistics
import subprocess
import sys

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np

import eqx_collective as ec
from eqx_collective import nn


try:
    from _common import import_brainstate, interleaved_medians, row, timed
except ImportError:  # imported as `benchmarks.bench_ensemble`
    from ._common import import_brainstate, interleaved_medians, row, timed

AREA = "ensemble"
TARGET = 10.0


def make_stateful(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return nn.Sequential(
        nn.Linear(16, 32, key=k1),
        nn.ReLU(),
        nn.ValinaRNNCell(32, 32, key=k2),
        nn.Linear(32, 4, key=k3),
    )


def make_brainstate_stateful(bst):
    return bst.nn.Sequential(
        bst.nn.Linear(16, 32),
        bst.nn.ReLU(),
        bst.nn.ValinaRNNCell(32, 32),
        bst.nn.Linear(32, 4),
    )


def make_mlp(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return nn.Sequential(
        nn.Linear(16, 64, key=k1),
        nn.ReLU(),
        nn.Linear(64, 64, key=k2),
        nn.ReLU(),
        nn.Linear(64, 4, key=k3),
    )


def _nbytes(tree) -> int:
    return sum(int(x.nbytes) for x in jtu.tree_leaves(tree) if hasattr(x, "nbytes"))


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def _init_rows(bst, quick: bool) -> list[dict]:
    sizes, repeats = ((2, 4), 3) if quick else ((8, 64, 1024), 11)
    model = make_stateful(jax.random.key(0))
    key = jax.random.key(1)
    bs_model = make_brainstate_stateful(bst) if bst is not None else None
    rows = []
    for size in sizes:
        before = _maxrss_mib()

        def ours(size=size):
            return jax.block_until_ready(
                ec.vmap_init_all_states(model, axis_size=size, key=key)
            )

        ens = ours()
        rss = _maxrss_mib() - before
        assert ec.ensemble_size(ens) == size

        def independent(size=size):
            ens = ec.make_ensemble(make_stateful, key, size)
            return jax.block_until_ready(ec.vmap_init_all_states(ens, key=key))

        fns = [ours, independent]
        note = f"result {_mib(_nbytes(ens))}, peak RSS +{rss:.1f} MiB"
        if bs_model is not None:

            def theirs(size=size):
                bst.nn.vmap_init_all_states(bs_model, axis_size=size)
                return jax.block_until_ready(
                    [s.value for s in bs_model.states().values()]
                )

            bs_values = theirs()
            note += f"; brainstate result {_mib(_nbytes(bs_values))} (only `h` batched)"
            fns.append(theirs)
        times = interleaved_medians(fns, repeats, warmup=0)
        name = f"vmap_init_all_states, {size} members"
        rows.append(
            row(
                AREA,
                name,
                times[0],
                "brainstate",
                times[2] if bst is not None else None,
                note,
            )
        )
        rows.append(
            row(
                AREA,
                name,
                times[0],
                "make_ensemble + vmap_init_all_states (independent members)",
                times[1],
                "replicated parameters against independently built members",
            )
        )
    return rows


def _make_vmapped(ensemble):
    in_axes = ec.ensemble_in_axes(ensemble)

    @eqx.filter_jit
    def forward(ensemble, x):
        return eqx.filter_vmap(lambda m, x: m(x), in_axes=(in_axes, None))(ensemble, x)

    return forward


def _make_member_fn():
    @eqx.filter_jit
    def forward(member, x):
        return member(x)

    return forward


def _make_member_leaves_fn(member):
    arrays, static = eqx.partition(member, eqx.is_array)
    treedef = jtu.tree_structure(arrays)

    @jax.jit
    def forward(leaves, x):
        return eqx.combine(jtu.tree_unflatten(treedef, leaves), static)(x)

    return forward


def _forward_rows(quick: bool) -> list[dict]:
    size, batch, repeats, compiles = (4, 2, 5, 1) if quick else (64, 32, 101, 3)
    ensemble = ec.make_ensemble(make_mlp, jax.random.key(0), size)
    members = ec.unstack(ensemble)
    member_leaves = [jtu.tree_leaves(eqx.filter(m, eqx.is_array)) for m in members]
    x = jax.random.normal(jax.random.key(1), (batch, 16))

    vmapped = _make_vmapped(ensemble)
    member_fn = _make_member_fn()
    leaves_fn = _make_member_leaves_fn(members[0])

    def loop(fn=member_fn):
        return jax.block_until_ready([fn(m, x) for m in members])

    def leaves_loop():
        return jax.block_until_ready([leaves_fn(ls, x) for ls in member_leaves])

    def vmap_call(fn=vmapped):
        return jax.block_until_ready(fn(ensemble, x))

    ys = vmap_call()
    np.testing.assert_allclose(ys, np.stack(loop()), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ys, np.stack(leaves_loop()), rtol=1e-5, atol=1e-5)

    first_vmap, first_loop = [], []
    for _ in range(compiles):
        first_vmap.append(timed(lambda: vmap_call(_make_vmapped(ensemble)))[0])
        first_loop.append(timed(lambda: loop(_make_member_fn()))[0])
    t_vmap, t_loop, t_leaves = interleaved_medians(
        [vmap_call, loop, leaves_loop], repeats, warmup=2
    )
    what = f"{size} members, batch {batch}"
    return [
        row(
            AREA,
            f"ensemble forward, filter_vmap under filter_jit ({what})",
            t_vmap,
            "loop, eqx.filter_jit per member",
            t_loop,
            "outputs equal",
            (
                f"ensemble forward: >= {TARGET:g}x faster than the loop over members",
                t_loop / t_vmap >= TARGET,
            ),
        ),
        row(
            AREA,
            "ensemble forward, filter_vmap under filter_jit",
            t_vmap,
            "loop, jax.jit on flat leaves",
            t_leaves,
        ),
        row(
            AREA,
            "ensemble forward, first call (trace + compile)",
            statistics.median(first_vmap),
            "loop, first pass (one compile)",
            statistics.median(first_loop),
            f"median of {compiles} fresh functions",
        ),
    ]


def _sharded_times(quick: bool) -> tuple[int, float, float]:
    """In a process with 8 simulated CPU devices: the median times of the forward
    pass of a 64-member ensemble, sharded over the devices and not."""
    assert jax.device_count() == 8, jax.devices()
    size, batch, repeats = (8, 2, 5) if quick else (64, 32, 51)
    ensemble = ec.make_ensemble(make_mlp, jax.random.key(0), size)
    sharded = ec.shard_ensemble(ensemble)
    x = jax.random.normal(jax.random.key(1), (batch, 16))
    forward = _make_vmapped(ensemble)
    fns = [
        lambda e=e: jax.block_until_ready(forward(e, x)) for e in (sharded, ensemble)
    ]
    np.testing.assert_allclose(fns[0](), fns[1](), rtol=1e-5, atol=1e-5)
    return size, *interleaved_medians(fns, repeats, warmup=2)


def _sharded_rows(quick: bool) -> list[dict]:
    """Runs `_sharded_times` in a subprocess: JAX fixes the device count at start."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    script = (
        f"import json, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
        f"import bench_ensemble as b; print(json.dumps(b._sharded_times({quick})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(f"the sharded benchmark failed:\n{out.stderr}")
    size, sharded, single = json.loads(out.stdout.splitlines()[-1])
    return [
        row(
            AREA,
            f"ensemble forward, {size} members sharded over 8 simulated CPU devices",
            sharded,
            "the same, on one device",
            single,
            "simulated devices share this machine's cores: a report, no target",
        )
    ]


def run(quick: bool = False) -> list[dict]:
    """Runs the benchmark; returns rows in the format of `_common.row`."""
    bst = import_brainstate()
    return _init_rows(bst, quick) + _forward_rows(quick) + _sharded_rows(quick)


if __name__ == "__main__":
    from run import cli

    cli(run, __doc__)
