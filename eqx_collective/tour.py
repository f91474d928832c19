"""A tour of eqx_collective: every cell of brainstate's *Collective Operations* tutorial,
rewritten for immutable Equinox modules. Run it with `python -m eqx_collective`.

Each section prints what the tutorial prints. Where brainstate mutates a module in place,
here every operation returns the new model, so each call is `model = op(model, ...)`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

import eqx_collective as ec
from eqx_collective import nn


def section(title: str) -> None:
    print(f"\n=== {title} ===")


def ordering_calls() -> None:
    section("Ordering calls with call_order")
    order = []

    class EncoderDecoder(eqx.Module):
        encoder: nn.Linear
        decoder: nn.Linear
        h: ec.HiddenState | None = None

        def __init__(self, *, key):
            k1, k2 = jax.random.split(key)
            self.encoder = nn.Linear((16,), (32,), key=k1)
            self.decoder = nn.Linear((32,), (16,), key=k2)
            self.h = None

        # The collective operation itself visits the children, so the parent only
        # initialises what is its own, and returns the updated module.
        @ec.call_order(0)
        def init_state(self, batch_size=None):
            order.append("EncoderDecoder.init_state")
            shape = (16,) if batch_size is None else (batch_size, 16)
            return eqx.tree_at(
                lambda m: m.h,
                self,
                ec.HiddenState(jnp.zeros(shape)),
                is_leaf=lambda x: x is None,
            )

        @ec.call_order(1)
        def reset_state(self, batch_size=None):
            order.append("EncoderDecoder.reset_state")
            return eqx.tree_at(lambda m: m.h.value, self, jnp.zeros_like(self.h.value))

    model = ec.init_all_states(EncoderDecoder(key=jax.random.key(0)), batch_size=2)
    model = ec.reset_all_states(model)
    print("Calls made:", order)
    print("Hidden state shape:", model.h.value.shape)


def initialising() -> None:
    section("Initialising every module")
    key = jax.random.key(1)
    model = nn.Sequential(
        nn.Linear((10,), (32,), key=key), nn.GELU(), nn.Dropout(prob=0.1)
    )
    # Initialise the entire stack at once.
    model = ec.init_all_states(model, batch_size=4)
    # Exclude nodes via a filter (here: the Dropout layer).
    model = ec.init_all_states(model, node_to_exclude=nn.Dropout)
    # Because every operation returns the new model, calls chain.
    model = ec.init_all_states(ec.init_all_states(model))
    print(model)


def resetting() -> None:
    section("Resetting state between sequences")
    rnn = nn.ValinaRNNCell(num_in=8, num_out=16, key=jax.random.key(2))
    rnn = ec.init_all_states(rnn, batch_size=2)
    # ... run some inference / training ...
    _, rnn = rnn(jnp.ones((2, 8)))
    # Reset hidden states before the next sequence (the batch axis is kept).
    rnn = ec.reset_all_states(rnn)
    print(rnn)


def batched_initialisation() -> None:
    section("Batched initialisation with vmap_*")
    k1, k2 = jax.random.split(jax.random.key(3))
    policy = nn.Sequential(
        nn.Linear((4,), (64,), key=k1), nn.GELU(), nn.Linear((64,), (2,), key=k2)
    )
    # Create 8 independent versions of the policy.
    policies = ec.vmap_init_all_states(policy, axis_size=8, key=jax.random.key(4))
    # Parameters gain an extra axis on the leading dimension.
    weights = policies.layers[0].weight.value
    print("Weight shape with batching:", weights["weight"].shape)
    # When finished with a rollout, reset all batched states at once.
    policies = ec.vmap_reset_all_states(policies, axis_size=8)
    print(policies)


def calling_methods() -> None:
    section("Calling arbitrary methods collectively")

    class LoggingLayer(eqx.Module):
        linear: nn.Linear

        def __init__(self, size, *, key):
            self.linear = nn.Linear((size,), (size,), key=key)

        # Read-only: return the statistic instead of appending it to a list.
        def log_stats(self):
            return jnp.mean(self.linear.weight.value["weight"])

    k1, k2 = jax.random.split(jax.random.key(5))
    net = nn.Sequential(LoggingLayer(size=8, key=k1), LoggingLayer(size=8, key=k2))
    net = ec.init_all_states(net)
    stats = ec.collect_all_fns(net, "log_stats", fn_if_not_exist="pass")
    print("Logged means per layer:", [[v] for v in stats.values()])
    # The vmap variant runs any method on every member of an ensemble.
    nets = ec.vmap_call_all_fns(
        ec.make_ensemble(lambda k: LoggingLayer(8, key=k), jax.random.key(6), 3),
        "init_state",
        fn_if_not_exist="pass",
    )
    print("Ensemble members:", ec.ensemble_size(nets))


def snapshot_of(model):
    """The tutorial's own snapshot loop, unchanged but for the model's `states`."""
    snapshot = {}
    for path, state in ec.states(model).items():
        if isinstance(state.value, dict):
            for key, value in state.value.items():
                snapshot[path + (key,)] = value
        else:
            snapshot[path] = state.value
    return snapshot


def restoring() -> None:
    section("Restoring states with assign_state_values")
    k1, k2 = jax.random.split(jax.random.key(7))
    autoencoder = nn.Sequential(
        nn.Linear((16,), (8,), key=k1), nn.ReLU(), nn.Linear((8,), (16,), key=k2)
    )
    autoencoder = ec.init_all_states(autoencoder)
    # Save values in a dict keyed by absolute state paths.
    state_snapshot = snapshot_of(autoencoder)
    # ... modify weights or states ...
    changed = ec.assign_state_values(
        autoencoder, {path: value + 1 for path, value in state_snapshot.items()}
    ).model
    restored, unexpected, missing = ec.assign_state_values(changed, state_snapshot)
    print("Unexpected keys:", unexpected)
    print("Missing keys:", missing)
    print("Restored exactly:", bool(eqx.tree_equal(restored, autoencoder)))


def lifecycle() -> None:
    section("Putting it all together")
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
    print("Outputs:", outputs.shape)
    print("Resetting states...")
    rnns = ec.vmap_reset_all_states(rnns, axis_size=4)
    # Restore parameters and hidden states.
    rnns, unexpected, missing = ec.assign_state_values(rnns, snapshot)
    print((unexpected, missing))
    print("Hidden state shape:", rnns.h.value.shape)


def main() -> None:
    print("eqx_collective tour: brainstate's collective operations on Equinox modules")
    ordering_calls()
    initialising()
    resetting()
    batched_initialisation()
    calling_methods()
    restoring()
    lifecycle()


if __name__ == "__main__":
    main()
