"""Training an ensemble of recurrent models at once, with `eqx.filter_vmap`.

Each of the `E` members is a `ValinaRNNCell` with a `Linear` read-out. The members are
built independently by `ec.make_ensemble` (so each has its own initial weights) and
stacked into **one** model whose arrays carry a leading ensemble axis of size `E`.
One jitted training step then updates every member: `eqx.filter_vmap` maps a
single-member step over the ensemble axis, and each member draws its own training
batches (its own data stream).

The task: the model sees a sine wave `sin(w t + phi)` with a random frequency and
phase, one sample per step, and predicts the next sample, so it has to infer the
frequency from what it has seen so far.

The pattern, which you can copy for any stateful Equinox model:

1. Build the ensemble from a factory and a key: `ec.make_ensemble(factory, key,
   size)`. The factory builds one member *and initialises its hidden states*
   (`ec.init_all_states(model, batch_size=B)`), so every member carries a hidden
   state of shape `(B, H)`, stacked to `(E, B, H)`. (`ec.vmap_init_all_states(model,
   axis_size=E, key=...)` is the alternative when the members should share their
   initial weights and differ only in their random states.)
2. Split off the parameters with `ec.partition(ensemble, ec.ParamState)`: it works on a
   stacked ensemble like on a single model. Give each member its own optimiser state,
   `eqx.filter_vmap(optimiser.init)(params)`, so that any optimiser (element-wise or
   not) sees one member as if it were trained alone.
3. Write the training step for **one** member, exactly as for a single model
   (`examples/train_rnn.py`): reset the hidden states with `ec.reset_all_states`, scan
   over time, differentiate with respect to the parameters only, apply optax. Inside
   the vmap each member is one model, so the collective operations run on it. Then
   `eqx.filter_vmap` it with `in_axes` from `ec.ensemble_in_axes` (axis 0 for every
   array, `None` for states shared between members) inside `ec.filter_jit`. This is
   the one pattern the docs teach (`docs/concepts/training.md`).
4. Afterwards, `ec.member(ensemble, i)` / `ec.unstack(ensemble)` give single models.

Every `--eval-every` steps the ensemble is also scored on held-out sequences that no
member trains on: the loss of the members' *mean* prediction, which is what an ensemble
is for. Run it with `python examples/train_ensemble.py` (`--help` for the options); it
saves a plot to `ensemble_losses.png` (`--plot PATH`): each member's training loss
faintly, their mean boldly, and the held-out loss of the ensemble. In a terminal a
progress bar shows the losses; `--quiet` prints nothing.
"""

import argparse
import os
import sys
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import eqx_collective as ec
from eqx_collective import nn


def make_batch(
    key: jax.Array, seq_len: int, batch_size: int
) -> tuple[jax.Array, jax.Array]:
    """Sine waves with random frequencies in [0.2, 0.6] rad/step and random phases,
    time-major: inputs `xs[t] = x(t)` and targets `ys[t] = x(t + 1)`, each of shape
    `(T, B, 1)`."""
    k_freq, k_phase = jax.random.split(key)
    freq = jax.random.uniform(k_freq, (1, batch_size, 1), minval=0.2, maxval=0.6)
    phase = jax.random.uniform(k_phase, (1, batch_size, 1), maxval=2 * jnp.pi)
    t = jnp.arange(seq_len + 1, dtype=freq.dtype)[:, None, None]
    wave = jnp.sin(freq * t + phase)  # (T + 1, B, 1)
    return wave[:-1], wave[1:]


def loss_fn(params: Any, rest: Any, xs: jax.Array, ys: jax.Array) -> jax.Array:
    """The mean squared error of one member over one batch of sequences."""
    hidden = ec.reset_all_states(rest)  # start every sequence from the initial state

    def step(hidden, x):
        y, model = ec.combine(params, hidden)(x)
        return ec.partition(model, ec.ParamState)[1], y

    _, preds = jax.lax.scan(step, hidden, xs)
    return jnp.mean((preds - ys) ** 2)


def make_member(key: jax.Array, hidden_size: int, batch_size: int) -> nn.Sequential:
    """One member: an RNN cell and a linear read-out, with its hidden state initialised
    for batches of `batch_size` sequences."""
    k_cell, k_out = jax.random.split(key)
    model = nn.Sequential(
        nn.ValinaRNNCell(1, hidden_size, activation="tanh", key=k_cell),
        nn.Linear(hidden_size, 1, key=k_out),
    )
    return ec.init_all_states(model, batch_size=batch_size)


def make_train_step(optimiser, params, rest, seq_len: int, batch_size: int):
    """The jitted step of the whole ensemble: `(params, rest, opt_state, member_keys)
    -> (params, opt_state, losses)`, one member's step mapped over the ensemble."""

    def member_step(params, rest, opt_state, key):
        """One training step of one member, written as for a single model."""
        xs, ys = make_batch(key, seq_len, batch_size)  # this member's own batch
        loss, grads = eqx.filter_value_and_grad(loss_fn)(params, rest, xs, ys)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return eqx.apply_updates(params, updates), opt_state, loss

    # Axis 0 for every array of the ensemble, None for shared states (none here).
    p_axes, r_axes = ec.ensemble_in_axes(params), ec.ensemble_in_axes(rest)
    in_axes, out_axes = (p_axes, r_axes, 0, 0), (p_axes, 0, 0)

    @ec.filter_jit
    def train_step(params, rest, opt_state, member_keys):
        step = eqx.filter_vmap(member_step, in_axes=in_axes, out_axes=out_axes)
        return step(params, rest, opt_state, member_keys)

    return train_step


@eqx.filter_jit
def evaluate(ensemble: Any, xs: jax.Array, ys: jax.Array) -> tuple[jax.Array, ...]:
    """Runs every member on the same sequences (`in_axes` None for them: not mapped).

    **Returns:** each member's loss (shape `(members,)`) and the loss of the members'
    mean prediction (a scalar).
    """

    def run(model):
        def step(model, x):
            y, model = model(x)
            return model, y

        return jax.lax.scan(step, ec.reset_all_states(model), xs)[1]

    preds = eqx.filter_vmap(run, in_axes=(ec.ensemble_in_axes(ensemble),))(ensemble)
    member_losses = jnp.mean((preds - ys[None]) ** 2, axis=(1, 2, 3))
    return member_losses, jnp.mean((preds.mean(0) - ys) ** 2)


def show_progress_bar(verbose: bool) -> bool:
    """A progress bar is for a person watching: not when quiet, not when stderr is not
    a terminal (a log file, a pipe, a test), not under CI (the `CI` variable set)."""
    return verbose and sys.stderr.isatty() and not os.environ.get("CI")


def main(
    steps: int = 400,
    *,
    members: int = 8,
    hidden_size: int = 32,
    seq_len: int = 30,
    batch_size: int = 16,
    learning_rate: float = 1e-2,
    seed: int = 0,
    plot: str | None = "ensemble_losses.png",
    eval_every: int = 25,
    log_every: int = 50,
    verbose: bool = True,
) -> dict[str, Any]:
    """Trains an ensemble of `members` RNNs on next-sample prediction of sine waves;
    prints nothing if not `verbose`.

    **Returns:** a dict with `first_losses` and `last_losses` (NumPy arrays of shape
    `(members,)`: each member's loss on its first and last batch), `losses` (shape
    `(steps, members)`), `held_out_steps` and `held_out_losses` (the loss of the
    members' mean prediction on held-out sequences, every `eval_every` steps and after
    the last), `test_losses` (each member's held-out loss at the end),
    `ensemble_test_loss` (the last held-out loss), `plot` (the path of the saved PNG,
    or `None`), `seconds` and the trained `ensemble`.
    """
    key_model, key_data, key_test = jax.random.split(jax.random.key(seed), 3)
    # `members` independently initialised models, stacked along a leading axis.
    ensemble = ec.make_ensemble(
        lambda k: make_member(k, hidden_size, batch_size), key_model, members
    )
    params, rest = ec.partition(ensemble, ec.ParamState)
    optimiser = optax.adam(learning_rate)
    opt_state = eqx.filter_vmap(optimiser.init)(params)  # one optimiser per member
    train_step = make_train_step(optimiser, params, rest, seq_len, batch_size)
    test_xs, test_ys = make_batch(key_test, seq_len, batch_size)  # never trained on

    losses, held_out = [], {}
    bar = show_progress_bar(verbose)
    start = time.perf_counter()
    keys = jax.random.split(key_data, steps)
    with tqdm(keys, desc="training", unit="step", disable=not bar) as progress:
        for i, key in enumerate(progress):
            member_keys = jax.random.split(key, members)  # a data stream per member
            params, opt_state, loss = train_step(params, rest, opt_state, member_keys)
            losses.append(np.asarray(loss))
            if i % eval_every == 0 or i == steps - 1:
                ensemble = ec.combine(params, rest)
                held_out[i] = float(evaluate(ensemble, test_xs, test_ys)[1])
            progress.set_postfix(
                loss=f"{losses[-1].mean():.4f}",
                held_out=f"{held_out[max(held_out)]:.4f}",
                refresh=False,
            )
            if verbose and not bar and (i % log_every == 0 or i == steps - 1):
                print(
                    f"step {i:5d}  mean loss {losses[-1].mean():.4f}  "
                    f"held-out loss {held_out[max(held_out)]:.4f}"
                )
    seconds = time.perf_counter() - start
    losses = np.stack(losses)  # (steps, members)
    test_losses = np.asarray(evaluate(ensemble, test_xs, test_ys)[0])
    best_model = ec.member(ensemble, int(np.argmin(test_losses)))  # a single model
    assert best_model.layers[0].h.value.shape == (batch_size, hidden_size)

    if plot is not None:
        save_plot(losses, held_out, plot)
    if verbose:
        report(losses, test_losses, held_out, seconds, plot)
    return {
        "first_losses": losses[0],
        "last_losses": losses[-1],
        "losses": losses,
        "held_out_steps": np.array(list(held_out)),
        "held_out_losses": np.array(list(held_out.values())),
        "test_losses": test_losses,
        "ensemble_test_loss": held_out[steps - 1],
        "plot": plot,
        "seconds": seconds,
        "ensemble": ensemble,
    }


def report(losses, test_losses, held_out, seconds, plot) -> None:
    steps, members = losses.shape
    print(f"trained {members} members for {steps} steps in {seconds:.1f} s")
    print("first loss per member:   ", np.array2string(losses[0], precision=4))
    print("last loss per member:    ", np.array2string(losses[-1], precision=4))
    print("held-out loss per member:", np.array2string(test_losses, precision=4))
    print(f"held-out loss of the ensemble's mean prediction: {held_out[steps - 1]:.4f}")
    print(f"best member: {int(np.argmin(test_losses))}")
    if plot is not None:
        print(f"loss curves saved to {plot}")


def save_plot(losses: np.ndarray, held_out: dict[int, float], path: str) -> None:
    """Saves the loss curves as a PNG: each member's training loss (`losses` of shape
    `(steps, members)`) faintly, their mean boldly, and the held-out loss of the
    ensemble's mean prediction (`held_out`, `{step: loss}`)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    steps, members = losses.shape
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i in range(members):
        label = f"each member ({members}), training" if i == 0 else None
        ax.plot(losses[:, i], lw=0.8, alpha=0.3, color="tab:blue", label=label)
    ax.plot(losses.mean(1), lw=2.5, color="tab:blue", label="mean of members, training")
    ax.plot(
        list(held_out),
        list(held_out.values()),
        "o-",
        lw=2,
        ms=4,
        color="tab:orange",
        label="ensemble's mean prediction, held out",
    )
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (MSE)")
    ax.set_title(f"An ensemble of {members} RNNs trained with one vmapped step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=400, help="training steps")
    parser.add_argument("--members", type=int, default=8, help="ensemble size")
    parser.add_argument("--hidden-size", type=int, default=32, help="RNN units")
    parser.add_argument("--seq-len", type=int, default=30, help="sequence length")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences/batch")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--eval-every", type=int, default=25, help="steps between held-out evaluations"
    )
    parser.add_argument(
        "--log-every", type=int, default=50, help="steps between log lines (no bar)"
    )
    parser.add_argument(
        "--plot", default="ensemble_losses.png", help="where to save the PNG"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short run (100 steps, 16 units)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.hidden_size = 100, 16
    return args


if __name__ == "__main__":
    args = parse_args()
    main(
        args.steps,
        members=args.members,
        hidden_size=args.hidden_size,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        plot=args.plot,
        eval_every=args.eval_every,
        log_every=args.log_every,
        verbose=not args.quiet,
    )
