"""One test per claim of docs/migration.md: each behaviour difference from brainstate
0.5.x, asserted for eqx_collective. Where brainstate is importable, some tests also
show brainstate's behaviour (`_bs()` returns `None` otherwise); every test asserts our
behaviour and passes without brainstate."""

import inspect
import warnings

import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_equal

import eqx_collective as ec
from eqx_collective import nn
from eqx_collective._paths import path_hash
from eqx_collective.testing import record_calls, TreeNode
from eqx_collective.tour import make_autoencoder, snapshot_of


def _bs():
    """brainstate 0.5.x if installed (the version the migration guide describes)."""
    try:
        import brainstate
    except ImportError:
        return None
    return brainstate if brainstate.__version__.startswith("0.5.") else None


class Noisy(eqx.Module):
    h: ec.HiddenState

    def init_state(self, *, key):
        return eqx.tree_at(lambda m: m.h.value, self, jax.random.normal(key, (3,)))

    def reset_state(self, *, key):
        return eqx.tree_at(lambda m: m.h.value, self, jax.random.uniform(key, (3,)))


def _noisy():
    return Noisy(ec.HiddenState(jnp.zeros(3)))


@pytest.fixture
def rnn(key):
    return nn.ValinaRNNCell(4, 8, key=key)


# ------------------------------------------------------------ the programming model


def test_operations_return_new_trees_instead_of_mutating(rnn):
    before = jax.tree.map(lambda x: x, rnn)
    out = ec.init_all_states(rnn, batch_size=2)
    assert rnn.h is None  # the input is untouched
    assert_trees_equal(rnn, before)
    assert out.h.value.shape == (2, 8)  # the result must be kept: model = op(model)
    out2 = ec.reset_all_states(out)
    assert out2 is not out and out.h.value.shape == (2, 8)


def test_pure_call_protocol_methods_return_the_updated_module():
    class Ported(eqx.Module):
        def init_state(self):  # brainstate style: mutate self, return None
            pass

    with pytest.raises(TypeError, match=r"path 'a'.*returned None.*must return"):
        ec.init_all_states({"a": Ported()})

    class Pure(eqx.Module):
        n: jax.Array

        def init_state(self):
            return eqx.tree_at(lambda m: m.n, self, self.n + 1)

    assert ec.init_all_states(Pure(jnp.array(0))).n == 1


def test_parent_need_not_forward_calls_to_children():
    class Parent(eqx.Module):
        child: TreeNode

        def init_state(self):  # no forwarding: the operation visits the child itself
            return self

    from eqx_collective.testing._strategies import node_class

    child = node_class("plain", None)((), {}, name="child")
    with record_calls() as calls:
        ec.init_all_states(Parent(child), key=jax.random.key(0))
    assert calls == [("init_state", "child")]


def test_explicit_keys_per_node_from_path_hash():
    model = {"a": _noisy(), "b": [_noisy()]}
    key = jax.random.key(3)
    out = ec.init_all_states(model, key=key)
    for path, node in (("a",), out["a"]), (("b", 0), out["b"][0]):
        expected = jax.random.normal(jax.random.fold_in(key, path_hash(path)), (3,))
        assert jnp.array_equal(node.h.value, expected)
    # adding a node leaves the others' streams unchanged
    bigger = ec.init_all_states({**model, "c": _noisy()}, key=key)
    assert jnp.array_equal(bigger["a"].h.value, out["a"].h.value)
    # the same key gives the same values: no global random state
    assert_trees_equal(ec.init_all_states(model, key=key), out)
    with pytest.raises(TypeError, match=r"path 'a'.*needs a random `key`"):
        ec.init_all_states(model)


def test_layers_take_explicit_keys_at_construction(key):
    a = nn.Linear(3, 2, key=key)
    b = nn.Linear(3, 2, key=key)
    assert_trees_equal(a, b)
    assert not jnp.array_equal(
        a.weight.value["weight"],
        nn.Linear(3, 2, key=jax.random.key(1)).weight.value["weight"],
    )


# ------------------------------------------------------------------ the vmap variants


def test_vmap_init_batches_parameters_too(key):
    policy = nn.Sequential(nn.Linear(4, 6, key=key), nn.GELU())
    policies = ec.vmap_init_all_states(policy, axis_size=8, key=key)
    assert policies.layers[0].weight.value["weight"].shape == (8, 4, 6)
    assert policies.layers[0].weight.value["bias"].shape == (8, 6)
    bs = _bs()
    if bs is not None:  # brainstate batches only states created in init_state
        p = bs.nn.Sequential(bs.nn.Linear((4,), (6,)))
        bs.nn.vmap_init_all_states(p, axis_size=8)
        assert p.layers[0].weight.value["weight"].shape == (4, 6)


def test_vmap_reset_keeps_the_ensemble_axis_and_gives_concrete_values(key):
    ens = ec.vmap_init_all_states(_noisy(), axis_size=4, key=key)
    reset = ec.vmap_reset_all_states(ens, key=jax.random.key(1))  # a random reset
    assert reset.h.value.shape == (4, 3)
    assert not isinstance(reset.h.value, jax.core.Tracer)
    np.asarray(reset.h.value)  # concrete: usable outside any transform
    assert not jnp.array_equal(reset.h.value[0], reset.h.value[1])
    # axis_size is inferred; a conflicting one is refused
    with pytest.raises(ValueError, match="conflicts with the ensemble"):
        ec.vmap_reset_all_states(ens, axis_size=5, key=key)


def test_each_method_runs_once_under_vmap():
    from eqx_collective.testing._strategies import node_class

    tree = node_class("plain", 0)(
        (
            node_class(1, "plain")(
                (), {"s": ec.HiddenState(jnp.zeros(2))}, name="child"
            ),
        ),
        {},
        name="root",
    )
    with record_calls() as calls:
        ens = ec.vmap_init_all_states(tree, axis_size=3, key=jax.random.key(0))
    assert calls == [("init_state", "root"), ("init_state", "child")]
    with record_calls() as calls:
        ec.vmap_reset_all_states(ec.vmap_init_all_states(ens, key=jax.random.key(1)))
    assert calls.count(("reset_state", "child")) == 1
    assert calls.count(("reset_state", "root")) == 1


class _WithStats(eqx.Module):
    w: ec.ParamState
    stats: ec.LongTermState

    def init_state(self, *, key):
        return self


def _with_stats():
    return _WithStats(ec.ParamState(jnp.ones((2, 2))), ec.LongTermState(jnp.zeros(3)))


def test_state_to_exclude_accepts_a_bare_type(key):
    ens = ec.vmap_init_all_states(
        _with_stats(), axis_size=4, key=key, state_to_exclude=ec.LongTermState
    )
    # ParamState is a LongTermState, so both are shared
    assert ens.w.value.shape == (2, 2) and ens.stats.value.shape == (3,)
    assert ens.w.shared and ens.stats.shared


def test_state_to_exclude_path_filters_match(key):
    for path_filter in (
        ec.PathPrefix("stats"),
        ec.PathContains("stats"),
        lambda path, state: path == ("stats",),
    ):
        ens = ec.vmap_init_all_states(
            _with_stats(), axis_size=4, key=key, state_to_exclude=path_filter
        )
        assert ens.stats.value.shape == (3,) and ens.stats.shared
        assert ens.w.value.shape == (4, 2, 2)


def test_the_ensemble_remembers_its_shared_states(key):
    ens = ec.vmap_init_all_states(
        _with_stats(), axis_size=4, key=key, state_to_exclude=ec.PathPrefix("stats")
    )
    again = ec.vmap_init_all_states(ens, key=key)  # no filter passed again
    assert again.stats.shared and again.stats.value.shape == (3,)
    assert ec.ensemble_in_axes(again).stats is None


def test_vmap_call_all_fns_runs_on_an_existing_ensemble(key):
    ens = ec.make_ensemble(lambda k: _noisy(), key, 3)
    out = ec.vmap_call_all_fns(ens, "init_state", key=key)
    assert out.h.value.shape == (3, 3)
    assert not jnp.array_equal(out.h.value[0], out.h.value[1])


def test_vmap_init_all_states_has_no_in_states_out_states_or_state_tag():
    for fn in (ec.vmap_init_all_states, ec.vmap_reset_all_states, ec.vmap_call_all_fns):
        params = inspect.signature(fn).parameters
        assert not {"in_states", "out_states", "state_tag"} & set(params)
    # a state's tag is set where it is created instead
    assert ec.HiddenState(jnp.zeros(2), tag="rnn").tag == "rnn"


# ------------------------------------------------------------------ collective calls


def test_fn_if_not_exist_is_validated_eagerly():
    # a bad value is refused even when no node lacks the method
    model = _noisy()
    with pytest.raises(ValueError, match="fn_if_not_exist"):
        ec.call_all_fns(model, "init_state", key=jax.random.key(0), fn_if_not_exist="x")
    with pytest.raises(ValueError, match="fn_if_not_exist"):
        ec.collect_all_fns(model, "init_state", fn_if_not_exist="none")
    bs = _bs()
    if bs is not None:  # brainstate only checks it when a node lacks the method
        bs.nn.call_all_fns(bs.nn.Linear(2, 3), "init_state", fn_if_not_exist="x")


def test_call_all_fns_has_a_read_only_counterpart_collect_all_fns(key):
    net = nn.Sequential(nn.Linear(2, 2, key=key), nn.ReLU())
    sizes = ec.collect_all_fns(net, "__len__", fn_if_not_exist="pass")
    assert sizes == {(): 2}
    model = {"a": _noisy(), "b": _noisy()}
    results = ec.collect_all_fns(model, "init_state", key=key)
    assert list(results) == [("a",), ("b",)]
    assert not jnp.any(model["a"].h.value)  # nothing is rebuilt or changed


def test_call_order_matches_brainstate():
    log = []

    class Node(eqx.Module):
        name: str = eqx.field(static=True)
        children: tuple = ()

        def init_state(self):
            log.append(self.name)
            return self

    class Late(Node):
        @ec.call_order(2)
        def init_state(self):
            log.append(self.name)
            return self

    class Early(Node):
        @ec.call_order(1)
        def init_state(self):
            log.append(self.name)
            return self

    tree = Node("root", (Late("late"), Node("a", (Early("early"),)), Node("b")))
    ec.init_all_states(tree)
    # undecorated first (children before parent), then by ascending level
    assert log == ["a", "b", "root", "early", "late"]
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        ec.call_order(10)
    assert ec.call_order(10, check_order_boundary=False)(lambda: 0).call_order == 10


def test_states_with_several_filters_returns_one_dict_union(key):
    cell = ec.init_all_states(nn.ValinaRNNCell(2, 3, key=key))
    both = ec.states(cell, ec.ParamState, ec.HiddenState)
    assert isinstance(both, dict)
    assert list(both) == [("W", "weight"), ("h",)]
    assert [ec.states(cell, f) for f in (ec.ParamState, ec.HiddenState)] == [
        {("W", "weight"): cell.W.weight},
        {("h",): cell.h},
    ]
    bs = _bs()
    if bs is not None:  # brainstate returns a tuple, one dict per filter
        lin = bs.nn.Linear(2, 3)
        assert isinstance(lin.states(bs.ParamState, bs.HiddenState), tuple)


# ------------------------------------------------------------------------ restoring


def test_assign_state_values_returns_model_unexpected_missing(key):
    lin = nn.Linear(2, 3, key=key)
    result = ec.assign_state_values(lin, {"weight.bias": jnp.ones(3), "nope": 1.0})
    assert isinstance(result, ec.AssignResult) and isinstance(result, tuple)
    model, unexpected, missing = result
    assert jnp.array_equal(model.weight.value["bias"], jnp.ones(3))
    assert jnp.array_equal(lin.weight.value["bias"], jnp.zeros(3))  # untouched
    assert unexpected == ["nope"] and missing == [("weight", "weight")]


def test_assign_accepts_the_tutorials_leaf_level_snapshot(key):
    ae = ec.init_all_states(make_autoencoder(key))
    snapshot = snapshot_of(ae)
    changed = ec.assign_state_values(ae, {p: v + 1 for p, v in snapshot.items()}).model
    restored, unexpected, missing = ec.assign_state_values(changed, snapshot)
    assert unexpected == [] and missing == []
    assert_trees_equal(restored, ae)
    assert snapshot == ec.leaf_values(ae)  # the same snapshot, in one call
    bs = _bs()
    if bs is not None:  # brainstate: every key unexpected, every state missing
        b = bs.nn.Sequential(bs.nn.Linear((4,), (3,)), bs.nn.ReLU())
        bs.nn.init_all_states(b)
        unexpected, missing = bs.nn.assign_state_values(
            b, snapshot_of(b, states=lambda m: m.states())
        )
        assert len(unexpected) == 2 and missing == [("layers", 0, "weight")]


def test_assign_checks_shape(key):
    lin = nn.Linear(2, 3, key=key)
    with pytest.raises(ValueError, match=r"'weight.weight': expected float32\[2,3\]"):
        ec.assign_state_values(lin, {"weight.weight": jnp.zeros((9, 9))})
    bs = _bs()
    if bs is not None:  # brainstate assigns any shape
        b = bs.nn.Linear((2,), (3,))
        value = {"weight": jnp.zeros((9, 9)), "bias": jnp.zeros(3)}
        assert bs.nn.assign_state_values(b, {("weight",): value}) == ([], [])
        assert b.weight.value["weight"].shape == (9, 9)


def test_assign_checks_structure(key):
    lin = nn.Linear(2, 3, key=key)
    with pytest.raises(ValueError, match=r"expected a value with leaves \['bias', "):
        ec.assign_state_values(lin, {"weight": {"weight": jnp.zeros((2, 3))}})


def test_assign_checks_dtype(key):
    lin = nn.Linear(2, 3, key=key)
    with pytest.raises(ValueError, match="casts to it safely"):
        ec.assign_state_values(lin, {"weight.bias": jnp.zeros(3, jnp.int32)})
    # a safe cast is accepted and stored in the state's dtype
    out = ec.assign_state_values(lin, {"weight.bias": jnp.zeros(3, jnp.float16)}).model
    assert out.weight.value["bias"].dtype == jnp.float32


def test_assign_checks_units():
    m = {"v": ec.HiddenState(jnp.zeros(2) * u.mV)}
    out = ec.assign_state_values(m, {("v",): jnp.ones(2) * u.volt}).model
    assert out["v"].value.unit == u.mV
    np.testing.assert_allclose(out["v"].value.mantissa, [1000.0, 1000.0])
    for wrong in (jnp.ones(2) * u.second, jnp.ones(2)):
        with pytest.raises(ValueError, match="at 'v'"):
            ec.assign_state_values(m, {("v",): wrong})


def test_assign_missing_granularity(key):
    cell = ec.init_all_states(nn.ValinaRNNCell(2, 3, key=key))
    missing = ec.assign_state_values(cell, {"W.weight.bias": jnp.zeros(3)}).missing
    # an untouched state by its state-level path, a partly covered one leaf by leaf
    assert missing == [("W", "weight", "weight"), ("h",)]


def test_assign_strict(key):
    lin = nn.Linear(2, 3, key=key)
    with pytest.raises(ValueError, match="missing key"):
        ec.assign_state_values(lin, {"weight.bias": jnp.zeros(3)}, strict=True)


def test_checkpoint_files(tmp_path, key):
    cell = nn.ValinaRNNCell(2, 3, state_init=nn.ZeroInit(unit=u.mV), key=key)
    cell = ec.init_all_states(cell, batch_size=2)
    file = tmp_path / "cell.safetensors"
    ec.save_states(file, cell)
    loaded, unexpected, missing = ec.load_states(file, cell)[:3]
    assert unexpected == [] and missing == []
    assert_trees_equal(loaded, cell)
    with pytest.raises(ValueError, match="cannot load"):
        ec.load_states(file, nn.Linear(7, 7, key=key))


# ---------------------------------------------------------------------------- layers


def test_reset_without_batch_size_keeps_the_batch_axis(rnn):
    cell = ec.init_all_states(rnn, batch_size=2)
    _, cell = cell(jnp.ones((2, 4)))
    reset = ec.reset_all_states(cell)
    assert reset.h.value.shape == (2, 8)
    assert not jnp.any(reset.h.value)
    assert ec.reset_all_states(cell, batch_size=5).h.value.shape == (5, 8)


def test_dropout_prob_is_the_drop_probability(key):
    x = jnp.ones(10_000)
    y = nn.Dropout(prob=0.9)(x, key=key)
    dropped = float(jnp.mean(y == 0))
    assert 0.88 < dropped < 0.92  # brainstate's Dropout(prob=0.9) keeps 90 %
    assert jnp.allclose(y[y != 0], 10.0)  # survivors scaled by 1 / (1 - prob)
    assert jnp.array_equal(nn.Dropout(prob=0.9, inference=True)(x), x)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        nn.Dropout(prob=1.0)


def test_uninitialised_rnn_cells_raise_a_clear_error(rnn):
    assert rnn.h is None
    with pytest.raises(RuntimeError, match="never initialised.*init_all_states"):
        rnn(jnp.ones(4))
    with pytest.raises(RuntimeError, match="never initialised"):
        ec.reset_all_states(rnn)


def test_stateful_forward_returns_output_and_updated_layer(rnn):
    cell = ec.init_all_states(rnn)
    y, new = cell(jnp.ones(4))
    assert jnp.array_equal(new.h.value, y) and not jnp.any(cell.h.value)
    seq = ec.init_all_states(nn.Sequential(nn.Linear(3, 4, key=jax.random.key(1)), rnn))
    out, seq2 = seq(jnp.ones(3))
    assert out.shape == (8,) and isinstance(seq2, nn.Sequential)


def test_valina_rnn_cell_spelling_is_kept_with_an_alias():
    assert nn.VanillaRNNCell is nn.ValinaRNNCell


def test_plain_equinox_modules_work(key):
    mlp = eqx.nn.MLP(2, 2, 4, 1, key=key)
    assert ec.init_all_states(mlp) is mlp and ec.states(mlp, ec.HiddenState) == {}
    assert len(ec.states(mlp, ec.ParamState)) == 4  # its raw arrays are parameters
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ens = ec.vmap_init_all_states(mlp, axis_size=2, key=key)
    assert ens.layers[0].weight.shape == (2, 4, 2)


def test_an_ensemble_records_its_axes(key):
    square = nn.Linear(4, 4, key=key)  # every array leads with 4
    with pytest.raises(ValueError, match="not an ensemble"):
        ec.vmap_reset_all_states(square)
    cells = ec.make_ensemble(lambda k: nn.GRUCell(3, 4, key=k), key, 6)
    grid = ec.vmap_init_all_states(cells, axis_size=2, key=key)
    assert ec.ensemble_shape(grid) == (2, 6)
    assert ec.ensemble_shape(ec.member(grid, 1)) == (6,)


def test_every_array_counts(key):
    mlp = eqx.nn.MLP(2, 2, 4, 1, key=key)
    params, rest = ec.partition(mlp, ec.ParamState)
    assert len(ec.leaf_values(params)) == 4 and ec.leaf_values(rest) == {}
    snapshot = ec.leaf_values(mlp)
    other = eqx.nn.MLP(2, 2, 4, 1, key=jax.random.key(1))
    restored = ec.assign_state_values(other, snapshot, strict=True).model
    assert all(
        bool(jnp.all(a == b))
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(mlp), strict=True)
    )
