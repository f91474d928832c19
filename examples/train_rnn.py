"""Training a recurrent model with a pure-functional JIT loop and optax.

The task is a *delayed copy*: at every time step the model sees one random number and
must output the number it saw `delay` steps earlier (zero before that), so it has to
keep the last few inputs in its hidden state. The model is a `GRUCell` followed by a
`Linear` read-out, held in an `eqx_collective.nn.Sequential`; its hidden state is a
`HiddenState`, its weights are `ParamState`s.

The pattern, which you can copy for any stateful Equinox model:

1. **Initialise** every hidden state once, with the batch size of the training
   batches: `model = ec.init_all_states(model, batch_size=B)`.
2. **Partition** the model into its parameters and the rest:
   `params, rest = ec.partition(model, ec.ParamState)`. Only `params` is given to
   `eqx.filter_value_and_grad` and to the optax optimiser, so gradients and optimiser
   state exist for the weights only, never for hidden states.
3. In the jitted step, **reset** every hidden state at the start of each sequence
   batch with `ec.reset_all_states(rest)`: one call, whatever the model's nesting, and
   the batch shape is kept. It is an ordinary pure function, so it traces into the
   compiled step like any other JAX code.
4. **Scan over time** with `jax.lax.scan`, carrying only the non-parameter part (the
   hidden states). Each step rebuilds the model with `ec.combine(params, hidden)`,
   calls it (a stateful layer returns `(output, updated_layer)`) and splits the
   updated hidden states off again. The parameters are closed over, so the scan does
   not carry (and copy) them.

Run it with `python examples/train_rnn.py` (`--help` for the options). In a terminal a
progress bar shows the loss; with `--quiet` it prints nothing, and in a log file or
under CI (`CI` set) it prints a line every `--log-every` steps instead of the bar.
"""

import argparse
import os
import sys
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from tqdm import tqdm

import eqx_collective as ec
from eqx_collective import nn


def make_model(hidden_size: int, *, key: jax.Array) -> nn.Sequential:
    """A GRU cell (1 input, `hidden_size` units) followed by a linear read-out to one
    output. The hidden state does not exist yet: `init_all_states` creates it."""
    k_cell, k_out = jax.random.split(key)
    return nn.Sequential(
        nn.GRUCell(1, hidden_size, key=k_cell),
        nn.Linear(hidden_size, 1, key=k_out),
    )


def make_batch(
    key: jax.Array, seq_len: int, batch_size: int, delay: int
) -> tuple[jax.Array, jax.Array]:
    """Inputs and targets of the delayed-copy task, time-major (`(T, B, 1)`) as
    `jax.lax.scan` wants them: `ys[t] = xs[t - delay]`, and 0 for `t < delay`."""
    xs = jax.random.normal(key, (seq_len, batch_size, 1))
    ys = jnp.concatenate([jnp.zeros_like(xs[:delay]), xs[: seq_len - delay]], axis=0)
    return xs, ys


def loss_fn(params: Any, rest: Any, xs: jax.Array, ys: jax.Array):
    """Mean squared error over a batch of sequences.

    `params` is the part that is differentiated; `rest` holds the hidden states (and
    the static structure). Returns the loss and, as auxiliary output, the hidden
    states at the end of the sequences.
    """
    # Every sequence batch starts from the initial hidden state: one collective call
    # resets every stateful layer of the model, inside the compiled step.
    hidden = ec.reset_all_states(rest)

    def step(hidden, x):
        model = ec.combine(params, hidden)
        y, model = model(x)  # stateful: (output, model with the new hidden state)
        _, hidden = ec.partition(model, ec.ParamState)
        return hidden, y

    hidden, preds = jax.lax.scan(step, hidden, xs)
    return jnp.mean((preds - ys) ** 2), hidden


def make_train_step(optimiser: optax.GradientTransformation):
    """The jitted training step: `(params, rest, opt_state, xs, ys) -> (params, rest,
    opt_state, loss)`. Everything is passed in and returned, nothing is mutated."""

    @eqx.filter_jit
    def train_step(params, rest, opt_state, xs, ys):
        (loss, rest), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(
            params, rest, xs, ys
        )
        updates, opt_state = optimiser.update(grads, opt_state, params)
        params = eqx.apply_updates(params, updates)
        return params, rest, opt_state, loss

    return train_step


def show_progress_bar(verbose: bool) -> bool:
    """A progress bar is for a person watching: not when quiet, not when stderr is not
    a terminal (a log file, a pipe, a test), not under CI (the `CI` variable set)."""
    return verbose and sys.stderr.isatty() and not os.environ.get("CI")


def main(
    steps: int = 500,
    *,
    hidden_size: int = 32,
    seq_len: int = 20,
    batch_size: int = 32,
    delay: int = 2,
    learning_rate: float = 1e-2,
    seed: int = 0,
    log_every: int = 50,
    verbose: bool = True,
) -> dict[str, Any]:
    """Trains the GRU model on the delayed-copy task; prints nothing if not `verbose`.

    **Returns:** a dict with `first_loss`, `last_loss` (of the first and last batch),
    `losses` (one per step), `seconds` (wall time, compilation included) and the
    trained `model`.
    """
    key_model, key_data = jax.random.split(jax.random.key(seed))
    model = make_model(hidden_size, key=key_model)
    # Create every hidden state, with a leading batch axis.
    model = ec.init_all_states(model, batch_size=batch_size)
    # Parameters on one side, hidden states (and static fields) on the other.
    params, rest = ec.partition(model, ec.ParamState)

    optimiser = optax.adam(learning_rate)
    opt_state = optimiser.init(params)  # optax sees the parameters only
    train_step = make_train_step(optimiser)
    batch = jax.jit(make_batch, static_argnums=(1, 2, 3))

    losses = []
    bar = show_progress_bar(verbose)
    start = time.perf_counter()
    keys = jax.random.split(key_data, steps)
    with tqdm(keys, desc="training", unit="step", disable=not bar) as progress:
        for i, key in enumerate(progress):
            xs, ys = batch(key, seq_len, batch_size, delay)
            params, rest, opt_state, loss = train_step(params, rest, opt_state, xs, ys)
            losses.append(float(loss))
            progress.set_postfix(loss=f"{losses[-1]:.5f}", refresh=False)
            if verbose and not bar and (i % log_every == 0 or i == steps - 1):
                print(f"step {i:5d}  loss {losses[-1]:.5f}")
    seconds = time.perf_counter() - start

    model = ec.combine(params, rest)
    if verbose:
        print(
            f"final loss {losses[-1]:.5f} (first {losses[0]:.5f}) after {steps} "
            f"steps in {seconds:.1f} s"
        )
    return {
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "losses": losses,
        "seconds": seconds,
        "model": model,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=500, help="training steps")
    parser.add_argument("--hidden-size", type=int, default=32, help="GRU units")
    parser.add_argument("--seq-len", type=int, default=20, help="sequence length")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences/batch")
    parser.add_argument("--delay", type=int, default=2, help="how far back to copy")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--log-every", type=int, default=50, help="steps between log lines (no bar)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short run (150 steps, 16 units)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.hidden_size = 150, 16
    return args


if __name__ == "__main__":
    args = parse_args()
    main(
        args.steps,
        hidden_size=args.hidden_size,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        delay=args.delay,
        learning_rate=args.lr,
        seed=args.seed,
        log_every=args.log_every,
        verbose=not args.quiet,
    )
