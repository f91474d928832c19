"""Checkpointing a model's states with `save_states` / `load_states`.

Four things a training script needs from checkpoints, each shown below:

1. **Exact round trip.** `ec.save_states(path, model)` writes every state's value
   (parameters *and* hidden states) to a standard safetensors file (one tensor per
   leaf, named by its path); `ec.load_states(path, fresh_model)` assigns them to a
   freshly built model of the same structure and returns `(model, unexpected,
   missing)` (and `.converted` by name). The restore is bit-exact, and
   `brainunit` units survive: here the recurrent cell's hidden state is in millivolts
   (`state_init=ZeroInit(unit=brainunit.mV)`).
2. **Partial loads.** Loading into a model that has an extra layer assigns what
   matches and reports the rest in `missing`; loading a bigger model's file into a
   smaller model reports the surplus in `unexpected`. `strict=True` turns either into
   an error, for when a partial match must not pass silently.
3. **Checks.** Every loaded value is checked against the state it replaces
   (structure, shape, dtype, unit); a mismatch is a `ValueError` naming each path, and
   nothing is assigned. Here: loading an ensemble's file into a single model.
4. **Ensembles.** A stacked ensemble (from `ec.make_ensemble` or
   `ec.vmap_init_all_states`) is saved and loaded like any model; its arrays simply
   carry the ensemble axis.

The file is a safetensors file with JSON metadata, read memory-mapped: loading never
unpickles or runs anything from it. `load_states(..., rename=...)` loads the file of a
refactored model (see `docs/concepts/restore.md`), and `ec.save_sharded` /
`ec.load_sharded` checkpoint an ensemble sharded over devices with orbax.

Run it with `python examples/checkpoint.py` (`--out-dir DIR` keeps the files; by
default they go to a temporary directory; `--help` for the options, `--quiet` to print
nothing).
"""

import argparse
import os
import tempfile
from typing import Any

import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import safetensors

import eqx_collective as ec
from eqx_collective import nn


def make_model(
    key: jax.Array, *, batch_size: int, hidden_size: int, extra_layer: bool = False
) -> nn.Sequential:
    """A `Linear` encoder and a `ValinaRNNCell` whose hidden state is in mV, with its
    hidden state initialised (zeros, with a batch axis); optionally a `Linear`
    read-out as a third layer (no bias: its output is in mV, like its input)."""
    k_in, k_cell, k_out = jax.random.split(key, 3)
    layers = [
        nn.Linear(3, 16, key=k_in),
        nn.ValinaRNNCell(
            16, hidden_size, state_init=nn.ZeroInit(unit=u.mV), key=k_cell
        ),
    ]
    if extra_layer:
        layers.append(nn.Linear(hidden_size, 2, b_init=None, key=k_out))
    return ec.init_all_states(nn.Sequential(*layers), batch_size=batch_size)


def run(model: nn.Sequential, xs: jax.Array) -> nn.Sequential:
    """Steps the model through the inputs `xs` (time first), so that its hidden
    state holds something other than its initial zeros."""

    def step(model, x):
        _, model = model(x)
        return model, None

    return jax.lax.scan(step, model, xs)[0]


def identical(a: Any, b: Any, paths: Any = None) -> bool:
    """Whether the states of `a` and `b` hold bit-for-bit the same values: the same
    leaf paths, types, units, dtypes, shapes and bytes (only at `paths` if given)."""
    va, vb = ec.leaf_values(a), ec.leaf_values(b)
    if paths is None:
        if va.keys() != vb.keys():
            return False
        paths = va.keys()
    for path in paths:
        x, y = va[path], vb[path]
        if isinstance(x, u.Quantity) or isinstance(y, u.Quantity):
            if not (isinstance(x, u.Quantity) and isinstance(y, u.Quantity)):
                return False
            if x.unit != y.unit or str(x.unit) != str(y.unit):
                return False
            x, y = x.mantissa, y.mantissa
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            return False
    return True


def main(
    out_dir: str | None = None,
    *,
    batch_size: int = 2,
    hidden_size: int = 8,
    members: int = 4,
    steps: int = 5,
    verbose: bool = True,
) -> dict[str, Any]:
    """Runs the four checkpoint scenarios, writing the files to `out_dir` (a temporary
    directory if `None`). `steps` is how many time steps are run before saving, so
    that the hidden states are not all zeros.

    **Returns:** a dict with `single_exact`, `partial_exact` (the matching part of the
    partial load), `ensemble_exact` and `all_exact` (bools); `partial_missing` and
    `partial_unexpected` (the reports of the two partial loads); `mismatch_refused`
    (whether loading an ensemble's file into a single model was refused) and `files`
    (the checkpoint paths; deleted afterwards if `out_dir` was `None`).
    """
    if out_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return main(
                tmp,
                batch_size=batch_size,
                hidden_size=hidden_size,
                members=members,
                steps=steps,
                verbose=verbose,
            )
    say = print if verbose else (lambda *args, **kwargs: None)
    sizes = {"batch_size": batch_size, "hidden_size": hidden_size}
    keys = iter(jax.random.split(jax.random.key(0), 8))
    files = {
        name: os.path.join(out_dir, f"{name}.safetensors")
        for name in ("model", "bigger", "ensemble")
    }

    say("1. Save, build a fresh model, load: an exact round trip")
    model = make_model(next(keys), **sizes)
    model = run(model, jax.random.normal(next(keys), (steps, batch_size, 3)))
    ec.save_states(files["model"], model)
    with safetensors.safe_open(files["model"], framework="np") as f:
        say("   saved tensors:", ", ".join(f.keys()))
    fresh = make_model(next(keys), **sizes)  # other weights, zero hidden state
    say("   fresh model equal before loading:", identical(fresh, model))
    restored, unexpected, missing = ec.load_states(files["model"], fresh)
    single_exact = identical(restored, model) and not unexpected and not missing
    say("   unexpected:", unexpected, " missing:", missing)
    say("   hidden state:", restored.layers[1].h.value.unit, "unit,", end=" ")
    say("restored exactly:", single_exact)

    say("2. Partial loads")
    bigger = make_model(next(keys), extra_layer=True, **sizes)
    bigger, unexpected, partial_missing = ec.load_states(files["model"], bigger)
    say("   into a model with an extra layer: unexpected", unexpected, end=", ")
    say("missing", partial_missing)
    partial_exact = identical(bigger, model, paths=ec.leaf_values(model).keys())
    say("   the layers both models have restored exactly:", partial_exact)
    ec.save_states(files["bigger"], bigger)
    small, partial_unexpected, missing = ec.load_states(files["bigger"], fresh)
    say("   the bigger model's file into the small model: unexpected", end=" ")
    say(partial_unexpected, end=", ")
    say("missing", missing)
    try:
        ec.load_states(files["bigger"], fresh, strict=True)
        strict_refused = False
    except ValueError as e:
        strict_refused = True
        say("   with strict=True: ValueError:")
        for line in str(e).splitlines():
            say("     ", line)

    say("3. Values are checked before anything is assigned")

    def make_member(key):
        return make_model(key, **sizes)

    ensemble = ec.make_ensemble(make_member, next(keys), members)
    xs = jax.random.normal(next(keys), (members, steps, batch_size, 3))
    # Each member runs on its own inputs, so their hidden states differ.
    ensemble = eqx.filter_jit(
        eqx.filter_vmap(run, in_axes=(ec.ensemble_in_axes(ensemble), 0))
    )(ensemble, xs)
    ec.save_states(files["ensemble"], ensemble)
    try:
        ec.load_states(files["ensemble"], fresh)
        mismatch_refused = False
    except ValueError as e:
        mismatch_refused = True
        say("   an ensemble's file into a single model: ValueError:")
        for line in str(e).splitlines():  # the whole message, as a user sees it
            say("     ", line)

    say("4. Ensembles round-trip like any model")
    fresh_ensemble = ec.make_ensemble(make_member, next(keys), members)
    restored_ensemble, unexpected, missing = ec.load_states(
        files["ensemble"], fresh_ensemble
    )
    ensemble_exact = (
        identical(restored_ensemble, ensemble) and not unexpected and not missing
    )
    say(f"   {members} members, hidden state", end=" ")
    say(restored_ensemble.layers[1].h.value.shape, end=", ")
    say("restored exactly:", ensemble_exact)
    member_exact = identical(ec.member(restored_ensemble, 1), ec.member(ensemble, 1))
    say("   member 1 of the restored ensemble is member 1 of the saved one:", end=" ")
    say(member_exact)

    all_exact = single_exact and partial_exact and ensemble_exact and member_exact
    say("All restores exact:", all_exact)
    # Sanity checks of the example itself.
    assert jnp.any(model.layers[1].h.value.mantissa != 0)
    assert strict_refused
    return {
        "single_exact": single_exact,
        "partial_exact": partial_exact,
        "ensemble_exact": ensemble_exact and member_exact,
        "all_exact": all_exact,
        "partial_missing": partial_missing,
        "partial_unexpected": partial_unexpected,
        "mismatch_refused": mismatch_refused,
        "files": files,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--out-dir",
        default=None,
        help="keep the checkpoints here (else in a temporary directory)",
    )
    parser.add_argument("--batch-size", type=int, default=2, help="sequences/batch")
    parser.add_argument("--hidden-size", type=int, default=8, help="RNN units")
    parser.add_argument("--members", type=int, default=4, help="ensemble size")
    parser.add_argument("--steps", type=int, default=5, help="time steps before saving")
    parser.add_argument(
        "--quick", action="store_true", help="the smallest setting (2 members)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    if args.quick:
        args.members, args.hidden_size = 2, 4
    return args


if __name__ == "__main__":
    args = parse_args()
    main(
        args.out_dir,
        batch_size=args.batch_size,
        hidden_size=args.hidden_size,
        members=args.members,
        steps=args.steps,
        verbose=not args.quiet,
    )
