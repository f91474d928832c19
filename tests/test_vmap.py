import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    assert_jit_matches_eager,
    assert_member_matches,
    assert_pure,
    assert_trees_equal,
)
from hypothesis import given, settings, strategies as st

import eqx_collective as ec
from eqx_collective.testing import ensembles, module_trees, record_calls
from eqx_collective.tour import make_policy


def _member_keys(key, n):
    return jax.random.split(key, n)


# ---------------------------------------------------------------- properties


@given(ensembles())
def test_member_i_equals_the_single_model_initialised_with_key_i(drawn):
    ensemble, model, key = drawn
    n = ec.ensemble_size(ensemble)
    for i, k in enumerate(_member_keys(key, n)):
        assert_member_matches(ensemble, i, ec.init_all_states(model, key=k))


@given(module_trees(), st.integers(1, 3))
def test_vmap_init_every_array_gains_the_axis(model, n):
    ensemble = assert_pure(
        ec.vmap_init_all_states, model, axis_size=n, key=jax.random.key(0)
    )
    before = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))
    after = jax.tree_util.tree_leaves(eqx.filter(ensemble, eqx.is_array))
    assert [(n, *x.shape) for x in before] == [x.shape for x in after]


@given(ensembles())
def test_vmap_reset_member_wise_and_keeps_the_axis(drawn):
    ensemble, _, _ = drawn
    key = jax.random.key(7)
    n = ec.ensemble_size(ensemble)
    reset = assert_pure(ec.vmap_reset_all_states, ensemble, key=key)
    assert ec.ensemble_size(reset) == n
    for i, (single, k) in enumerate(
        zip(ec.unstack(ensemble), _member_keys(key, n), strict=True)
    ):
        assert_member_matches(reset, i, ec.reset_all_states(single, key=k))
    for leaf in jax.tree_util.tree_leaves(reset):
        assert not isinstance(leaf, jax.core.Tracer)


@settings(max_examples=8)  # each example compiles three vmapped operations
@given(ensembles(max_size=3))
def test_vmap_ops_jit_equals_eager(drawn):
    ensemble, model, key = drawn
    n = ec.ensemble_size(ensemble)
    assert_jit_matches_eager(
        lambda m, k: ec.vmap_init_all_states(m, axis_size=n, key=k), model, key
    )
    assert_jit_matches_eager(
        lambda e, k: ec.vmap_reset_all_states(e, key=k), ensemble, key
    )
    assert_jit_matches_eager(
        lambda e, k: ec.vmap_call_all_fns(
            e, "init_state", key=k, fn_if_not_exist="pass"
        ),
        ensemble,
        key,
    )


@given(module_trees(max_depth=2))
def test_methods_run_once_under_vmap(model):
    with record_calls() as single:
        ec.init_all_states(model, key=jax.random.key(0))
    with record_calls() as vmapped:
        ec.vmap_init_all_states(model, axis_size=3, key=jax.random.key(0))
    assert vmapped == single  # once per node, not once per member nor twice


# ---------------------------------------------------------------- shared states


class WithStats(eqx.Module):
    w: ec.ParamState
    h: ec.HiddenState | None = None
    stats: ec.LongTermState | None = None
    buffer: ec.NonBatchState | None = None

    def init_state(self, *, key):
        is_none = lambda x: x is None
        new = eqx.tree_at(
            lambda m: (m.h, m.stats, m.buffer),
            self,
            (
                ec.HiddenState(jax.random.normal(key, (3,))),
                ec.LongTermState(jnp.zeros(3)),
                ec.NonBatchState(jnp.ones(2)),
            ),
            is_leaf=is_none,
        )
        return new

    def reset_state(self, *, key):
        return eqx.tree_at(lambda m: m.h.value, self, jax.random.uniform(key, (3,)))


@pytest.fixture
def with_stats():
    return WithStats(ec.ParamState(jnp.arange(6.0).reshape(2, 3)))


@pytest.mark.parametrize(
    "exclude",
    [ec.LongTermState, (ec.LongTermState,), ec.PathPrefix("stats"), "nope", None],
)
def test_state_to_exclude_any_filter_form(with_stats, key, exclude):
    ensemble = ec.vmap_init_all_states(
        with_stats, axis_size=4, key=key, state_to_exclude=exclude
    )
    # ParamState is a LongTermState: excluded too by the type filters.
    shared_w = exclude in (ec.LongTermState, (ec.LongTermState,))
    shared_stats = exclude not in ("nope", None)
    assert ensemble.w.value.shape == ((2, 3) if shared_w else (4, 2, 3))
    assert ensemble.stats.value.shape == ((3,) if shared_stats else (4, 3))
    assert ensemble.stats.shared is shared_stats
    assert ensemble.buffer.value.shape == (2,)  # NonBatchState: always shared
    assert ensemble.h.value.shape == (4, 3)


def test_ensemble_remembers_shared_states(with_stats, key):
    ensemble = ec.vmap_init_all_states(
        with_stats, axis_size=4, key=key, state_to_exclude=ec.PathPrefix("stats")
    )
    reset = ec.vmap_reset_all_states(ensemble, key=key)  # no filter passed again
    assert reset.stats.value.shape == (3,) and reset.stats.shared
    assert reset.h.value.shape == (4, 3)
    assert not jnp.array_equal(reset.h.value[0], reset.h.value[1])
    spec = ec.ensemble_in_axes(reset)
    assert spec.stats is None and spec.buffer is None
    out = eqx.filter_vmap(
        lambda m: m.h.value.sum() + m.stats.value.sum(), in_axes=(spec,)
    )(reset)
    assert out.shape == (4,)


def test_shared_state_must_not_depend_on_the_member(key):
    class Bad(eqx.Module):
        s: ec.NonBatchState

        def init_state(self, *, key):
            return eqx.tree_at(lambda m: m.s.value, self, jax.random.normal(key, (2,)))

    with pytest.raises(ValueError, match="shared state"):
        ec.vmap_init_all_states(
            Bad(ec.NonBatchState(jnp.zeros(2))), axis_size=3, key=key
        )


# ---------------------------------------------------------------- the tutorial's cells


def test_tutorial_policy_ensemble(key):
    policy = make_policy(jax.random.key(1))
    policies = ec.vmap_init_all_states(policy, axis_size=8, key=key)
    assert policies.layers[0].weight.value["weight"].shape == (8, 4, 64)
    assert policies.layers[2].weight.value["bias"].shape == (8, 2)
    policies = ec.vmap_reset_all_states(policies, axis_size=8)
    assert policies.layers[0].weight.value["weight"].shape == (8, 4, 64)
    y = eqx.filter_vmap(
        lambda p, x: p(x), in_axes=(ec.ensemble_in_axes(policies), None)
    )(policies, jnp.ones(4))
    assert y.shape == (8, 2)


def test_tutorial_rnn_lifecycle(key):
    rnn = ec.nn.ValinaRNNCell(num_in=4, num_out=8, key=jax.random.key(3))
    rnns = ec.vmap_init_all_states(rnn, axis_size=4, key=key)
    assert rnns.h.value.shape == (4, 8)
    assert rnns.W.weight.value["weight"].shape == (4, 12, 8)
    inputs = jax.random.normal(key, (12, 4, 4))

    @eqx.filter_vmap(in_axes=(ec.ensemble_in_axes(rnns), 0))
    def step(cell, x):
        return cell(x)

    for t in range(inputs.shape[0]):
        _, rnns = step(rnns, inputs[t])
    assert rnns.h.value.shape == (4, 8)
    rnns = ec.vmap_reset_all_states(rnns)
    assert rnns.h.value.shape == (4, 8)  # brainstate drops or leaks this axis
    assert jnp.array_equal(rnns.h.value, jnp.zeros((4, 8)))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "bad, error",
    [(0, ValueError), (-2, ValueError), (2.5, TypeError), (True, TypeError),
     ("3", TypeError), (np.bool_(True), TypeError)],
)  # fmt: skip
def test_bad_axis_size(with_stats, key, bad, error):
    with pytest.raises(error, match="positive integer"):
        ec.vmap_init_all_states(with_stats, axis_size=bad, key=key)


def test_numpy_and_jax_integer_sizes(with_stats, key):
    for size in (np.int64(3), np.int32(3), jnp.asarray(3)):
        ens = ec.vmap_init_all_states(with_stats, axis_size=size, key=key)
        assert ec.ensemble_shape(ens) == (3,) and type(ec.ensemble_size(ens)) is int
    assert (
        ec.ensemble_size(
            ec.make_ensemble(lambda k: ec.nn.Linear(2, 2, key=k), key, np.int64(2))
        )
        == 2
    )


def test_axis_size_conflicting_with_the_ensemble(with_stats, key):
    ensemble = ec.vmap_init_all_states(with_stats, axis_size=4, key=key)
    with pytest.raises(ValueError, match="conflicts with the ensemble"):
        ec.vmap_reset_all_states(ensemble, axis_size=3, key=key)
    with pytest.raises(ValueError, match="positive integer"):
        ec.vmap_call_all_fns(ensemble, "reset_state", axis_size=0, key=key)
    assert ec.vmap_reset_all_states(ensemble, axis_size=4, key=key).h.value.shape == (
        4,
        3,
    )


def test_vmap_reset_needs_an_ensemble(key):
    single = ec.init_all_states(ec.nn.ValinaRNNCell(4, 8, key=key))
    with pytest.raises(ValueError, match="not an ensemble"):
        ec.vmap_reset_all_states(single)


def test_vmap_init_without_axis_size_reinitialises_an_ensemble(with_stats, key):
    ensemble = ec.vmap_init_all_states(with_stats, axis_size=2, key=key)
    again = ec.vmap_init_all_states(ensemble, key=jax.random.key(5))
    assert again.h.value.shape == (2, 3)
    assert not jnp.array_equal(again.h.value, ensemble.h.value)


# ------------------------------------------------ the vmap variants under a transform


def test_vmap_reset_per_outer_member_of_an_ensemble_of_ensembles(key):
    cell = ec.nn.ValinaRNNCell(3, 4, key=key)
    nested = ec.make_ensemble(
        lambda k: ec.vmap_init_all_states(cell, batch_size=5, axis_size=3, key=k),
        key,
        2,
    )
    reset = eqx.filter_vmap(ec.vmap_reset_all_states)(nested)  # each member: 3 cells
    assert ec.ensemble_shape(reset) == (2, 3) and reset.h.value.shape == (2, 3, 5, 4)
    assert_trees_equal(reset, ec.vmap_reset_all_states(nested))
    keys = jax.random.split(key, 2)
    again = eqx.filter_vmap(lambda m, k: ec.vmap_init_all_states(m, key=k))(
        nested, keys
    )
    assert_trees_equal(again, ec.vmap_init_all_states(nested, key=key))
    # a new level made inside the transform is recorded inside the outer one
    grid = eqx.filter_vmap(
        lambda m: ec.vmap_init_all_states(m, batch_size=5, axis_size=4)
    )(ec.member(nested, 0))
    assert ec.ensemble_shape(grid) == (3, 4) and grid.h.value.shape == (3, 4, 5, 4)
    assert_trees_equal(
        ec.member(ec.member(grid, 2), 1), ec.member(ec.member(nested, 0), 2)
    )


def test_a_single_level_member_is_refused_by_the_vmap_variants(key):
    ens = ec.vmap_init_all_states(ec.nn.ValinaRNNCell(3, 4, key=key), axis_size=4)
    for op in (
        ec.vmap_reset_all_states,
        lambda m: ec.vmap_call_all_fns(m, "reset_state"),
        lambda m: ec.vmap_reset_all_states(m, axis_size=4),  # no adopting a member
    ):
        with pytest.raises(ValueError, match="one member of an ensemble with axes"):
            eqx.filter_vmap(op)(ens)
