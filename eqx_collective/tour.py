"""A tour of eqx_collective: every cell of brainstate's *Collective Operations* tutorial,
rewritten for immutable Equinox modules. Run it with `python -m eqx_collective`
(`--help` for the options, `--list` for the sections).

Each section prints what the tutorial prints. Where brainstate mutates a module in place,
here every operation returns the new model, so each call is `model = op(model, ...)`.
Where the output differs from the tutorial's, the line says what brainstate prints and
why, in brackets; `docs/tutorial.md` explains each difference at length.

The tutorial's models are defined at module level (`EncoderDecoder`, `LoggingLayer`,
`make_policy`, `make_autoencoder`, and its snapshot loop, `snapshot_of`), so that the
tests check these very ones. The tour needs nothing beyond the library's own
dependencies.
"""

import argparse
from collections.abc import Callable, Sequence
from typing import Any, Self

import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, PRNGKeyArray

import eqx_collective as ec
from eqx_collective import nn


Say = Callable[..., None]


def differs(say: Say, label: str, ours: Any, theirs: str, reason: str) -> None:
    """Prints one result beside the tutorial's figure for it and the reason they
    differ, e.g. `Weight shape: (8, 4, 64)  [brainstate prints (4, 64): ...]`."""
    say(f"{label}: {ours}  [brainstate prints {theirs}: {reason}]")


# The tutorial's models, at module level so that the tests use these very ones.


class EncoderDecoder(eqx.Module):
    """The tutorial's `EncoderDecoder` (section *Ordering calls with `call_order`*): an
    encoder `Linear(16 -> 32)` and a decoder `Linear(32 -> 16)`, with `init_state` at
    `call_order(0)` and `reset_state` at `call_order(1)`.

    Unlike brainstate's, the methods do not forward the call to the children (the
    collective operation visits them itself, before the decorated methods) and they
    return the updated module. So that they have something to do, the model keeps a
    hidden state of its own: `h`, the latent code of the last call (`None` until
    `init_state`).

    **Arguments:**

    - `key`: a JAX random key for the two layers' parameters.
    """

    encoder: nn.Linear
    decoder: nn.Linear
    h: ec.HiddenState | None

    def __init__(self, *, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.encoder = nn.Linear((16,), (32,), key=k1)
        self.decoder = nn.Linear((32,), (16,), key=k2)
        self.h = None

    @ec.call_order(0)
    def init_state(self, batch_size: int | None = None) -> Self:
        """Creates `h`, zeros of shape `(32,)`, or `(batch_size, 32)`."""
        shape = self.encoder.out_size
        if batch_size is not None:
            shape = (batch_size, *shape)
        return eqx.tree_at(
            lambda m: m.h,
            self,
            ec.HiddenState(jnp.zeros(shape)),
            is_leaf=lambda x: x is None,
        )

    @ec.call_order(1)
    def reset_state(self) -> Self:
        """Sets `h` back to zeros, of the same shape."""
        if self.h is None:
            raise ValueError("`EncoderDecoder.reset_state`: call `init_state` first.")
        return eqx.tree_at(lambda m: m.h.value, self, jnp.zeros_like(self.h.value))

    def __call__(self, x: ArrayLike | u.Quantity) -> tuple[Array | u.Quantity, Self]:
        """Encodes and decodes `x`, of shape `(16,)` or `(batch, 16)`.

        **Returns:** `(reconstruction, updated_model)`, the updated model keeping the
        latent code in `h`.
        """
        code = self.encoder(x)
        return self.decoder(code), eqx.tree_at(lambda m: m.h.value, self, code)


class LoggingLayer(eqx.Module):
    """The tutorial's `LoggingLayer` (section *Calling arbitrary methods
    collectively*): a `Linear(size -> size)` whose `log_stats` gives the mean of its
    weight matrix.

    Immutable, it cannot append the statistic to a list it holds, as brainstate's
    does: `log_stats` returns it, and `ec.collect_all_fns` gathers the results. It
    needs no `init_state` forwarding to its `Linear`: the operations visit it.

    **Arguments:**

    - `size`: the number of input and output features.
    - `key`: a JAX random key for the parameters.
    """

    linear: nn.Linear

    def __init__(self, size: int, *, key: PRNGKeyArray):
        self.linear = nn.Linear((size,), (size,), key=key)

    # Read-only: return the statistic instead of appending it to a list.
    def log_stats(self) -> Array:
        """The mean of the weight matrix (the bias left out, as in the tutorial)."""
        return jnp.mean(self.linear.weight.value["weight"])


def make_policy(key: PRNGKeyArray) -> nn.Sequential:
    """The tutorial's `policy` (section *Batched initialisation with `vmap_*`*):
    `Linear(4 -> 64)`, `GELU`, `Linear(64 -> 2)`, its parameters drawn from `key`."""
    k1, k2 = jax.random.split(key)
    return nn.Sequential(
        nn.Linear((4,), (64,), key=k1), nn.GELU(), nn.Linear((64,), (2,), key=k2)
    )


def make_autoencoder(key: PRNGKeyArray) -> nn.Sequential:
    """The tutorial's `autoencoder` (section *Restoring states with
    `assign_state_values`*): `Linear(16 -> 8)`, `ReLU`, `Linear(8 -> 16)`, its
    parameters drawn from `key`."""
    k1, k2 = jax.random.split(key)
    return nn.Sequential(
        nn.Linear((16,), (8,), key=k1), nn.ReLU(), nn.Linear((8,), (16,), key=k2)
    )


def snapshot_of(
    model: Any, states: Callable[[Any], dict] = ec.states
) -> dict[ec.Path, Any]:
    """The tutorial's own snapshot loop (sections *Restoring states* and *Putting it
    all together*), unchanged but for the model's states, `ec.states(model)`: a
    *leaf-level* snapshot, one key per array inside a state's dict.

    **Arguments:**

    - `model`: the model.
    - `states`: how to list its states by path; for a brainstate model, as in the
        tutorial, `lambda m: m.states()`.

    **Returns:** `{path: value}`; `ec.leaf_values(model)` gives the same in one call.
    """
    snapshot = {}
    for path, state in states(model).items():
        if isinstance(state.value, dict):
            for key, value in state.value.items():
                snapshot[path + (key,)] = value
        else:
            snapshot[path] = state.value
    return snapshot


# The sections, one per cell (or group of cells) of the tutorial.


def ordering_calls(say: Say) -> None:
    model = EncoderDecoder(key=jax.random.key(0))
    # The order in which the operations call `init_state`: the children's
    # (undecorated) first, then the model's own (level 0). `collect_all_fns` makes the
    # calls in that order and returns their results by path; the model is unchanged.
    order = ec.collect_all_fns(model, "init_state", kwargs={"batch_size": 2})
    say("Order of the init_state calls:", [ec.path_str(p) or "<root>" for p in order])
    model = ec.init_all_states(model, batch_size=2)
    model = ec.reset_all_states(model)
    assert model.h is not None  # created by `init_state`
    say("Hidden state shape:", model.h.value.shape)
    say("(brainstate's cell prints nothing: it only defines the class.)")


def initialising(say: Say) -> None:
    key = jax.random.key(1)
    # Every operation returns the new model, so construction and initialisation chain
    # into one expression. This initialises the entire stack at once.
    model = ec.init_all_states(
        nn.Sequential(
            nn.Linear((10,), (32,), key=key), nn.GELU(), nn.Dropout(prob=0.1)
        ),
        batch_size=4,
    )
    # Exclude nodes via a filter (here: the Dropout layer).
    model = ec.init_all_states(model, node_to_exclude=nn.Dropout)
    say(model)
    say("(brainstate's cell prints nothing; none of these layers has state to create.)")


def resetting(say: Say) -> None:
    rnn = nn.ValinaRNNCell(num_in=8, num_out=16, key=jax.random.key(2))
    rnn = ec.init_all_states(rnn, batch_size=2)
    # ... run some inference / training ...
    _, rnn = rnn(jnp.ones((2, 8)))
    # Reset hidden states before the next sequence (the batch axis is kept).
    rnn = ec.reset_all_states(rnn)
    say(rnn)
    assert rnn.h is not None  # created by `init_state`
    differs(
        say,
        "Hidden state shape after the reset",
        rnn.h.value.shape,
        "(16,)",
        "its reset without `batch_size` drops the batch axis",
    )


def batched_initialisation(say: Say) -> None:
    policy = make_policy(jax.random.key(3))
    # An ensemble of 8 members: each member's `init_state` runs with its own key, and
    # the parameters are replicated (start equal); `ec.make_ensemble` builds members
    # with independent parameters.
    policies = ec.vmap_init_all_states(policy, axis_size=8, key=jax.random.key(4))
    # Parameters gain an extra axis on the leading dimension.
    weights = policies.layers[0].weight.value
    differs(
        say,
        "Weight shape with batching",
        weights["weight"].shape,
        "(4, 64)",
        "its parameters never gain the ensemble axis",
    )
    # When finished with a rollout, reset all batched states at once.
    policies = ec.vmap_reset_all_states(policies, axis_size=8)
    say(policies)
    say("[brainstate prints f32[4,64] and f32[64,2] above: the same reason]")


def calling_methods(say: Say) -> None:
    k1, k2 = jax.random.split(jax.random.key(5))
    net = nn.Sequential(LoggingLayer(size=8, key=k1), LoggingLayer(size=8, key=k2))
    net = ec.init_all_states(net)
    stats = ec.collect_all_fns(net, "log_stats", fn_if_not_exist="pass")
    differs(
        say,
        "Logged means per layer",
        [[v] for v in stats.values()],
        "other numbers, 0.0521806 and 0.03177379",
        "its weights come from a global random state, these from explicit keys",
    )
    # The vmap variant runs any method on every member of an ensemble.
    nets = ec.vmap_call_all_fns(
        ec.make_ensemble(lambda k: LoggingLayer(8, key=k), jax.random.key(6), 3),
        "init_state",
        fn_if_not_exist="pass",
    )
    say("Ensemble members:", ec.ensemble_size(nets))


LEAF_KEYS = (
    "it only reads state-level keys, so its own leaf-level snapshot restores nothing"
)


def restoring(say: Say) -> None:
    autoencoder = ec.init_all_states(make_autoencoder(jax.random.key(7)))
    # Save values in a dict keyed by absolute state paths.
    state_snapshot = snapshot_of(autoencoder)
    # ... modify weights or states ...
    changed = ec.assign_state_values(
        autoencoder, {path: value + 1 for path, value in state_snapshot.items()}
    ).model
    restored, unexpected, missing = ec.assign_state_values(changed, state_snapshot)
    theirs = "the 4 leaf keys, [('layers', 0, 'weight', 'bias'), ...]"
    differs(say, "Unexpected keys", unexpected, theirs, LEAF_KEYS)
    theirs = "[('layers', 0, 'weight'), ('layers', 2, 'weight')]"
    differs(say, "Missing keys", missing, theirs, "the same reason")
    say("Restored exactly:", bool(eqx.tree_equal(restored, autoencoder)))


def lifecycle(say: Say) -> None:
    rnn = nn.ValinaRNNCell(num_in=4, num_out=8, key=jax.random.key(8))
    rnns = ec.vmap_init_all_states(rnn, axis_size=4, key=jax.random.key(9))
    # Save a snapshot of initial states.
    snapshot = snapshot_of(rnns)

    # Simulate a rollout: one jitted scan over time, every member at once.
    @eqx.filter_jit
    def rollout(rnns, inputs):
        params, hidden = ec.partition(rnns, ec.ParamState)
        in_axes = ec.ensemble_in_axes(rnns)

        def step(hidden, x):
            out, new = eqx.filter_vmap(lambda cell, x: cell(x), in_axes=(in_axes, 0))(
                ec.combine(params, hidden), x
            )
            return ec.partition(new, ec.ParamState)[1], out

        hidden, outputs = jax.lax.scan(step, hidden, inputs)
        return ec.combine(params, hidden), outputs

    inputs = jax.random.normal(jax.random.key(10), (12, 4, 4))
    rnns, outputs = rollout(rnns, inputs)
    say("Outputs:", outputs.shape)
    say("Resetting states...  [brainstate prints this line in Chinese]")
    rnns = ec.vmap_reset_all_states(rnns, axis_size=4)
    # Restore parameters and hidden states.
    rnns, unexpected, missing = ec.assign_state_values(rnns, snapshot)
    theirs = "([('W', 'weight', 'bias'), ('W', 'weight', 'weight')], [('W', 'weight')])"
    differs(say, "(unexpected, missing)", (unexpected, missing), theirs, LEAF_KEYS)
    say("Hidden state shape:", rnns.h.value.shape)


# name: (the tutorial's heading, the section)
SECTIONS: dict[str, tuple[str, Callable[[Say], None]]] = {
    "call-order": ("Ordering calls with call_order", ordering_calls),
    "init": ("Initialising every module", initialising),
    "reset": ("Resetting state between sequences", resetting),
    "vmap": ("Batched initialisation with vmap_*", batched_initialisation),
    "call": ("Calling arbitrary methods collectively", calling_methods),
    "restore": ("Restoring states with assign_state_values", restoring),
    "together": ("Putting it all together", lifecycle),
}


def _parser(prog: str) -> argparse.ArgumentParser:
    listing = "\n".join(
        f"  {i}. {name:<11} {title}" for i, (name, (title, _)) in enumerate(
            SECTIONS.items(), 1
        )
    )  # fmt: skip
    return argparse.ArgumentParser(
        prog=prog,
        description=(
            "The tour: every cell of brainstate's Collective Operations tutorial, run "
            "on immutable Equinox modules, printing what the tutorial prints. Where "
            "the output differs, the line says what brainstate prints and why."
        ),
        epilog=f"sections (by name or number):\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _sections(parser: argparse.ArgumentParser, wanted: Sequence[str]) -> list[str]:
    names = list(SECTIONS)
    chosen = []
    for item in wanted:
        if item.isdigit() and 1 <= int(item) <= len(names):
            chosen.append(names[int(item) - 1])
        elif item in SECTIONS:
            chosen.append(item)
        else:
            parser.error(
                f"there is no section {item!r}; choose from {', '.join(names)} "
                f"(or their numbers, 1 to {len(names)}); `--list` lists them."
            )
    return chosen or names


def main(
    argv: Sequence[str] | None = None, prog: str = "python -m eqx_collective"
) -> int:
    """Runs the tour. `argv` are the command-line arguments (`sys.argv[1:]` if `None`):
    section names or numbers (all if none), `--list`, `--quiet`; `prog` is how the
    help calls the command.

    **Returns:** the exit status, 0.
    """
    parser = _parser(prog)
    parser.add_argument(
        "sections",
        nargs="*",
        metavar="SECTION",
        help="the sections to run, by name or number (default: all of them)",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the sections and exit"
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print nothing; run the sections as a check (the exit status says)",
    )
    args = parser.parse_args(argv)
    if args.list:
        for i, (name, (title, _)) in enumerate(SECTIONS.items(), 1):
            print(f"{i}. {name:<11} {title}")
        return 0
    chosen = _sections(parser, args.sections)
    say = (lambda *a, **k: None) if args.quiet else print
    say("eqx_collective tour: brainstate's collective operations on Equinox modules")
    say("Lines with [brainstate prints ...] differ from the tutorial; docs/tutorial.md")
    say("explains each difference.")
    for name in chosen:
        title, run = SECTIONS[name]
        say(f"\n=== {title} ===")
        run(say)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
