import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_member_matches, assert_trees_equal
from hypothesis import given, settings, strategies as st

import eqx_collective as ec
from eqx_collective.testing import assert_members_differ, ensembles, module_trees
from eqx_collective.testing._strategies import node_class


@given(ensembles())
def test_stack_unstack_round_trip(drawn):
    ensemble, _, _ = drawn
    members = ec.unstack(ensemble)
    assert len(members) == ec.ensemble_size(ensemble)
    assert_trees_equal(ec.stack(members), ensemble)
    for i, m in enumerate(members):
        assert_trees_equal(ec.member(ensemble, i), m)
    assert_trees_equal(ec.member(ensemble, -1), members[-1])


def test_make_ensemble_members_differ_in_parameters(key):
    ens = ec.make_ensemble(lambda k: ec.nn.Linear(3, 2, key=k), key, 5)
    w = ens.weight.value["weight"]
    assert w.shape == (5, 3, 2)
    assert not jnp.array_equal(w[0], w[1])
    # Member i is exactly the model built with key i.
    for i, k in enumerate(jax.random.split(key, 5)):
        assert_trees_equal(ec.member(ens, i), ec.nn.Linear(3, 2, key=k))


def test_ensemble_in_axes_for_filter_vmap(key):
    ens = ec.make_ensemble(lambda k: ec.nn.Linear(3, 2, key=k), key, 4)
    x = jnp.ones(3)
    out = eqx.filter_vmap(lambda m, x: m(x), in_axes=(ec.ensemble_in_axes(ens), None))(
        ens, x
    )
    expected = jnp.stack([m(x) for m in ec.unstack(ens)])
    assert jnp.allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_shared_states_are_not_stacked(key):
    class M(eqx.Module):
        w: ec.ParamState
        s: ec.NonBatchState

    models = [
        M(ec.ParamState(jnp.full(2, float(i))), ec.NonBatchState(jnp.ones(3)))
        for i in range(3)
    ]
    ens = ec.stack(models)
    assert ens.w.value.shape == (3, 2) and ens.s.value.shape == (3,)
    assert_trees_equal(ec.member(ens, 2), models[2])


def test_unstacking_something_that_is_not_an_ensemble(key):
    single = ec.nn.Linear(3, 2, key=key)  # weight (3, 2), bias (2,)
    with pytest.raises(ValueError, match="`unstack`: this model is not an ensemble"):
        ec.unstack(single)
    with pytest.raises(ValueError, match="not an ensemble"):
        ec.unstack({"scalar": ec.ParamState(jnp.float32(1.0))})
    with pytest.raises(ValueError, match="no array"):
        ec.unstack({"nothing": 3})
    # plain Equinox modules: the leading axis is the ensemble axis, when there is one
    with pytest.raises(ValueError, match="'layers.0.weight' has leading axis 4"):
        ec.unstack(eqx.nn.MLP(2, 2, 4, 1, key=key))


def test_member_index_out_of_range(key):
    ens = ec.make_ensemble(lambda k: ec.nn.Linear(3, 2, key=k), key, 2)
    with pytest.raises(IndexError, match="out of range"):
        ec.member(ens, 2)
    with pytest.raises(IndexError, match="out of range"):
        ec.member(ens, -3)


def test_stack_refuses_mismatched_models(key):
    with pytest.raises(ValueError, match="at least one"):
        ec.stack([])
    with pytest.raises(ValueError, match="model 1"):
        ec.stack([ec.nn.Linear(3, 2, key=key), ec.nn.Linear(3, 4, key=key)])


@pytest.mark.parametrize(
    "bad, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError)]
)
def test_make_ensemble_bad_size(key, bad, error):
    with pytest.raises(error, match="positive integer"):
        ec.make_ensemble(lambda k: ec.nn.Linear(3, 2, key=k), key, bad)


def test_shard_ensemble_on_one_device(key):
    ens = ec.make_ensemble(lambda k: ec.nn.Linear(3, 2, key=k), key, 4)
    sharded = ec.shard_ensemble(ens)
    assert jnp.array_equal(sharded.weight.value["weight"], ens.weight.value["weight"])
    assert sharded.weight.ensemble_shape == (4,)
    assert isinstance(sharded.weight.ensemble_sharding, jax.sharding.NamedSharding)
    with pytest.raises(ValueError, match="not 'members'"):
        ec.shard_ensemble(
            ens, axis_name="members", mesh=jax.sharding.Mesh(jax.devices(), ("x",))
        )


# ------------------------------------------------- recorded axes (never guessed)


@given(module_trees())
def test_a_single_model_holding_states_is_never_an_ensemble(model):
    if not ec._walk.iter_states(model, views=False):
        return  # plain arrays only: the leading axis is the ensemble axis
    assert ec.ensemble_shape(model) == ()
    for op in (ec.ensemble_size, ec.unstack, lambda m: ec.member(m, 0)):
        with pytest.raises(ValueError, match="not an ensemble"):
            op(model)
    with pytest.raises(ValueError, match="not an ensemble"):
        ec.vmap_reset_all_states(model)


def test_a_square_layer_is_not_four_members(key):
    square = ec.nn.Linear(4, 4, key=key)  # weight (4, 4), bias (4,)
    assert ec.ensemble_shape(square) == ()
    with pytest.raises(ValueError, match="not an ensemble"):
        ec.member(square, 0)
    with pytest.raises(ValueError, match="not an ensemble"):
        ec.vmap_call_all_fns(square, "reset_state", fn_if_not_exist="pass")


def _keys(key, *sizes):
    """The member keys of nested levels: `keys[i][j]` for member `(i, j)`."""
    outer = jax.random.split(key, sizes[0])
    return [jax.random.split(k, sizes[1]) for k in outer]


@settings(max_examples=10)
@given(
    module_trees(max_depth=2), st.integers(1, 3), st.integers(1, 3), st.integers(0, 9)
)
def test_nested_ensembles_keep_both_axes(model, n_in, n_out, seed):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    inner = ec.vmap_init_all_states(model, axis_size=n_in, key=k1)
    nested = ec.vmap_init_all_states(inner, axis_size=n_out, key=k2)
    if not ec._walk.iter_states(model, views=False):
        return  # nothing holds the record; the leading axis is the only one
    assert ec.ensemble_shape(nested) == (n_out, n_in)
    inner_keys = jax.random.split(k1, n_in)
    for i, row in enumerate(_keys(k2, n_out, n_in)):
        outer_member = ec.member(nested, np.int64(i))
        assert ec.ensemble_shape(outer_member) == (n_in,)
        for j, k in enumerate(row):
            single = ec.init_all_states(model, key=inner_keys[j])
            assert_member_matches(outer_member, j, ec.init_all_states(single, key=k))
    reset = ec.vmap_reset_all_states(nested, key=k3)
    assert ec.ensemble_shape(reset) == (n_out, n_in)
    for i, row in enumerate(_keys(k3, n_out, n_in)):
        for j, k in enumerate(row):
            expected = ec.reset_all_states(ec.member(ec.member(nested, i), j), key=k)
            assert_member_matches(ec.member(reset, i), j, expected)
    again = ec.vmap_init_all_states(nested, key=k3)
    assert ec.ensemble_shape(again) == (n_out, n_in)
    assert [ec.ensemble_shape(m) for m in ec.unstack(nested)] == [(n_in,)] * n_out


def test_ensembles_of_ensembles_from_make_ensemble_and_stack(key):
    factory = lambda k: ec.nn.GRUCell(2, 3, key=k)
    nested = ec.make_ensemble(lambda k: ec.make_ensemble(factory, k, 3), key, 2)
    assert ec.ensemble_shape(nested) == (2, 3)
    nested = ec.vmap_init_all_states(nested, batch_size=4, key=key)
    assert nested.h.value.shape == (2, 3, 4, 3)  # members, members, batch, features
    assert ec.ensemble_shape(ec.stack(ec.unstack(nested))) == (2, 3)
    assert_trees_equal(ec.stack(ec.unstack(nested)), nested)


def test_member_index_types(key):
    ens = ec.make_ensemble(lambda k: ec.nn.Linear(3, 2, key=k), key, 4)
    want = ec.unstack(ens)[3]
    for index in (
        3,
        -1,
        np.int64(3),
        np.int32(-1),
        jnp.asarray(3),
        np.argmin([5, 4, 3, 1]),
    ):
        assert_trees_equal(ec.member(ens, index), want)
    at = eqx.filter_jit(ec.member)
    with jax.checking_leaks():
        assert_trees_equal(at(ens, jnp.asarray(3)), want)
    for bad in (True, np.bool_(False), jnp.asarray(True), 1.0, "1", jnp.zeros(2, int)):
        with pytest.raises(TypeError, match="integer"):
            ec.member(ens, bad)
    with pytest.raises(IndexError, match="out of range"):
        ec.member(ens, np.int64(4))


def test_take_and_where_members_keep_the_record_under_jit(key):
    ens = ec.make_ensemble(lambda k: ec.nn.Linear(3, 2, key=k), key, 5)
    members = ec.unstack(ens)
    take = eqx.filter_jit(ec.take_members)
    with jax.checking_leaks():
        picked = take(ens, jnp.asarray([4, 0, 4]))
    assert ec.ensemble_shape(picked) == (3,)
    assert_trees_equal(picked, ec.stack([members[4], members[0], members[4]]))
    other = ec.make_ensemble(lambda k: ec.nn.Linear(3, 2, key=k), jax.random.key(9), 5)
    mask = jnp.asarray([True, False, True, False, False])
    chosen = eqx.filter_jit(ec.where_members)(mask, ens, other)
    expected = [
        m if c else o for m, o, c in zip(members, ec.unstack(other), mask, strict=True)
    ]
    assert_trees_equal(chosen, ec.stack(expected))
    with pytest.raises(IndexError, match="out of range"):
        ec.take_members(ens, [5])
    with pytest.raises(ValueError, match="boolean mask of shape \\(5,\\)"):
        ec.where_members(jnp.ones(4, bool), ens, other)


def test_an_ensemble_built_by_hand_is_adopted_explicitly(key):
    keys = jax.random.split(key, 4)
    make = lambda k: ec.init_all_states(ec.nn.GRUCell(2, 3, key=k), batch_size=2)
    cells = eqx.filter_vmap(make)(keys)
    with pytest.raises(ValueError, match="as_ensemble"):
        ec.ensemble_size(cells)
    adopted = ec.as_ensemble(cells, 4)
    assert ec.ensemble_size(adopted) == 4
    assert_trees_equal(ec.member(adopted, 1), make(keys[1]))
    reset = ec.vmap_reset_all_states(cells, axis_size=4)  # `axis_size` adopts it too
    assert ec.ensemble_shape(reset) == (4,)
    with pytest.raises(ValueError, match="does not lead with an ensemble axis of 5"):
        ec.as_ensemble(cells, 5)
    # plain Equinox ensembles have nowhere to record: the leading axis is the axis
    mlps = eqx.filter_vmap(lambda k: eqx.nn.MLP(2, 2, 4, 1, key=k))(keys)
    assert ec.ensemble_size(mlps) == 4


def test_members_differ(key):
    ens = ec.make_ensemble(lambda k: ec.nn.Linear(3, 2, key=k), key, 4)
    assert_members_differ(ens)
    replicated = ec.vmap_init_all_states(ec.nn.Linear(3, 2, key=key), axis_size=4)
    with pytest.raises(AssertionError, match="Members 0 and 1 .* equal values"):
        assert_members_differ(replicated)
    # a random `init_state` draws per member; the replicated parameters do not
    model = node_class("plain", None)((), {"h": ec.HiddenState(jnp.zeros(3))}, name="n")
    ens = ec.vmap_init_all_states(model, axis_size=3, key=key)
    assert_members_differ(ens, ec.HiddenState)


# ------------------------------------- the record under Equinox's and JAX's transforms


def _assert_record_true(tree):
    """Every batched state's record describes its arrays (checked outside any
    transform): they lead with its ensemble axes, and have the member's ranks after."""
    for s in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, ec.State)):
        if not isinstance(s, ec.State) or ec.is_shared(s):
            continue
        shape = s.ensemble_shape
        arrays = [x for x in jax.tree.leaves(s.value) if hasattr(x, "shape")]
        if not shape:
            assert s.member_ranks is None
            continue
        assert [x.shape[: len(shape)] for x in arrays] == [shape] * len(arrays)
        assert s.member_ranks == tuple(x.ndim - len(shape) for x in arrays)


def _inside(ens, f, *mapped):
    """`f(member, *args)` inside `eqx.filter_vmap` over the outer level of `ens`."""
    in_axes = (ec.ensemble_in_axes(ens), *(0 for _ in mapped))
    return eqx.filter_vmap(f, in_axes=in_axes)(ens, *mapped)


def _per_member(ens, f):
    """`f(member_i, i)` for each outer member, stacked: what `_inside` must give."""
    return ec.stack([f(ec.member(ens, i), i) for i in range(ec.ensemble_size(ens))])


def _same(got, expected):
    _assert_record_true(got)
    assert_trees_equal(got, expected)


_LEVELS = ensembles(module_trees(max_depth=2), max_size=3, max_levels=2)


@settings(max_examples=15)
@given(_LEVELS)
def test_collective_operations_inside_filter_vmap(drawn):
    ens, _, key = drawn
    shape = ec.ensemble_shape(ens)
    nested, keys = len(shape) > 1, jax.random.split(key, shape[0])
    seen = []
    _inside(ens, lambda m: seen.append(ec.ensemble_shape(m)))
    assert seen == [shape[1:]]  # what the function sees, not the static record
    one_model = [
        (lambda m: ec.reset_all_states(m), ec.vmap_reset_all_states(ens)),
        (
            lambda m: ec.call_all_fns(m, "reset_state", fn_if_not_exist="pass"),
            ec.vmap_call_all_fns(ens, "reset_state", fn_if_not_exist="pass"),
        ),
    ]
    for f, vmap_variant in one_model:
        if nested:
            with pytest.raises(ValueError, match="runs on one model"):
                _inside(ens, f)
        else:
            _same(_inside(ens, f), vmap_variant)
    init = lambda m, k: ec.init_all_states(m, key=k)
    vmap_init = lambda m, k: ec.vmap_init_all_states(m, key=k)
    vmap_reset = lambda m: ec.vmap_reset_all_states(m)
    if nested:
        _same(_inside(ens, vmap_init, keys), ec.vmap_init_all_states(ens, key=key))
        _same(_inside(ens, vmap_reset), ec.vmap_reset_all_states(ens))
        with pytest.raises(ValueError, match="vmap_init_all_states"):
            _inside(ens, init, keys)
        with pytest.raises(ValueError, match="runs on one model"):
            _inside(ens, lambda m: ec.collect_all_fns(m, "x", fn_if_not_exist="pass"))
    else:
        _same(_inside(ens, init, keys), ec.vmap_init_all_states(ens, key=key))
        for f in (vmap_reset, lambda m, k: vmap_init(m, k)):
            with pytest.raises(ValueError, match="one member of an ensemble"):
                _inside(ens, f, *([keys] if f is not vmap_reset else []))


@settings(max_examples=15)
@given(_LEVELS)
def test_ensemble_operations_inside_filter_vmap(drawn):
    ens, _, _ = drawn
    shape = ec.ensemble_shape(ens)
    parts = lambda m: ec.combine(*ec.partition(m, ec.ParamState))
    _same(_inside(ens, parts), ens)
    _same(
        _inside(ens, lambda m: ec.stack([m, m])),
        _per_member(ens, lambda m, _: ec.stack([m, m])),
    )
    ops = {
        "member": lambda m: ec.member(m, -1),
        "unstack": lambda m: ec.stack(ec.unstack(m)),
        "take_members": lambda m: ec.take_members(m, jnp.asarray([0, 0])),
        "where_members": lambda m, o: ec.where_members(
            jnp.arange(shape[-1]) % 2 == 0, m, o
        ),
        "ensemble_size": lambda m: jnp.asarray(ec.ensemble_size(m)),
        "ensemble_in_axes": lambda m: ec.ensemble_in_axes(m) and None,
    }
    reset = ec.vmap_reset_all_states(ens)
    for name, f in ops.items():
        other = [reset] if name == "where_members" else []
        if len(shape) == 1:
            with pytest.raises(ValueError, match=f"`{name}`: this is one member"):
                _inside(ens, f, *other)
            continue
        got = _inside(ens, f, *other)
        if name == "ensemble_size":
            assert got.tolist() == [shape[1]] * shape[0]
        elif name != "ensemble_in_axes":
            args = lambda i: [ec.member(o, i) for o in other]
            _same(got, _per_member(ens, lambda m, i: f(m, *args(i))))


@settings(max_examples=10)
@given(_LEVELS)
def test_scan_over_members_and_jit(drawn):
    ens, _, _ = drawn
    shape = ec.ensemble_shape(ens)
    op = ec.reset_all_states if len(shape) == 1 else ec.vmap_reset_all_states

    def body(carry, m):
        return carry, (jnp.asarray(len(ec.ensemble_shape(m))), op(m))

    _, (levels, scanned) = jax.lax.scan(body, None, ens)
    assert levels.tolist() == [len(shape) - 1] * shape[0]
    _same(scanned, ec.vmap_reset_all_states(ens))
    jitted = eqx.filter_jit(lambda e: eqx.filter_vmap(op)(e))(ens)
    _same(jitted, ec.vmap_reset_all_states(ens))
    assert eqx.filter_jit(lambda e: jnp.asarray(ec.ensemble_size(e)))(ens) == shape[0]


def test_a_member_inside_filter_vmap_is_one_model(key):
    # a batch of 4 in a 4-member ensemble: the shapes alone would look like members
    cell = ec.nn.ValinaRNNCell(3, 16, key=key)
    ens = ec.vmap_init_all_states(cell, batch_size=4, axis_size=4, key=key)
    seen = {}

    def f(m):
        seen["shape"] = ec.ensemble_shape(m)
        for op in (ec.ensemble_size, lambda m: ec.member(m, 0)):
            with pytest.raises(ValueError, match="one member of an ensemble with axes"):
                op(m)
        return m

    _same(eqx.filter_vmap(f)(ens), ens)
    assert seen["shape"] == ()
    with_jax = jax.vmap(lambda m: jnp.asarray(len(ec.ensemble_shape(m))))(ens)
    assert with_jax.tolist() == [0] * 4


def test_init_all_states_on_an_ensemble_names_the_vmap_variant(key):
    cell = ec.nn.ValinaRNNCell(3, 16, key=key)
    ens = ec.vmap_init_all_states(cell, axis_size=8, key=key)
    for op, variant in (
        (ec.init_all_states, "vmap_init_all_states"),
        (ec.reset_all_states, "vmap_reset_all_states"),
        (
            lambda m, **kw: ec.call_all_fns(m, "init_state", kwargs=kw),
            "vmap_call_all_fns",
        ),
        (
            lambda m, **kw: ec.collect_all_fns(m, "init_state", kwargs=kw),
            "collect_all_fns(ec.member",
        ),
    ):
        with pytest.raises(
            ValueError, match=f"ensemble of 8 members.*`{re.escape(variant)}"
        ):
            op(ens, batch_size=4)
    # per member, inside `eqx.filter_vmap`, the batch axis comes out recorded right
    batched = eqx.filter_vmap(lambda m: ec.init_all_states(m, batch_size=4))(ens)
    assert batched.h.value.shape == (8, 4, 16) and ec.ensemble_shape(batched) == (8,)
    _same(batched, ec.vmap_init_all_states(ens, batch_size=4))
    _same(ec.vmap_reset_all_states(batched), batched)  # the next operation works


def test_calling_an_ensemble_directly_names_filter_vmap(key):
    cells = ec.vmap_init_all_states(
        ec.nn.ValinaRNNCell(3, 16, key=key), batch_size=2, axis_size=4, key=key
    )
    linears = ec.make_ensemble(lambda k: ec.nn.Linear(3, 2, key=k), key, 4)
    for layer, x in ((cells, jnp.ones((2, 3))), (linears, jnp.ones((5, 3)))):
        with pytest.raises(ValueError, match="ensemble of 4 members.*eqx.filter_vmap"):
            layer(x)
    ys, _ = eqx.filter_vmap(lambda c: c(jnp.ones((2, 3))))(cells)  # the fix
    assert ys.shape == (4, 2, 16)


def test_a_value_changed_behind_the_record_is_refused(key):
    ens = ec.vmap_init_all_states(ec.nn.ValinaRNNCell(3, 16, key=key), axis_size=8)
    # a member's rank changed by a call that does not keep the record
    grown = eqx.filter_vmap(lambda m: m.init_state(batch_size=4))(ens)
    with pytest.raises(ValueError, match="match no number of its ensemble levels"):
        ec.ensemble_size(grown)
    # the ensemble axis dropped outside any transform
    dropped = eqx.tree_at(lambda m: m.h.value, ens, ens.h.value[0])
    for op in (ec.ensemble_size, ec.vmap_reset_all_states, ec.reset_all_states):
        with pytest.raises(
            ValueError, match="does not lead with an ensemble axis of 8"
        ):
            op(dropped)
    # a transform over an axis other than the leading one
    nested = ec.vmap_init_all_states(ens, axis_size=2)
    with pytest.raises(ValueError, match="does not lead with an ensemble axis of 8"):
        eqx.filter_vmap(lambda m: ec.ensemble_size(m), in_axes=(1,))(nested)


def test_shard_ensemble_inside_a_transform_is_refused(key):
    nested = ec.make_ensemble(
        lambda k: ec.make_ensemble(lambda k: ec.nn.Linear(2, 2, key=k), k, 2), key, 2
    )
    with pytest.raises(ValueError, match="outside the transforms"):
        eqx.filter_vmap(ec.shard_ensemble)(nested)
