"""Tests for `assign_state_values`: keys, granularity of the reports, the checks."""

import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import eqx_collective as ec
from eqx_collective.testing import assert_trees_equal, stateful_pairs
from eqx_collective.tour import snapshot_of


# ------------------------------------------------------------------- test models


class Linear(eqx.Module):
    weight: ec.ParamState  # {'weight': (n_in, n_out), 'bias': (n_out,)}


class Model(eqx.Module):
    layers: tuple
    h: ec.HiddenState  # float32 array
    v: ec.HiddenState  # Quantity in mV
    count: ec.LongTermState  # int32
    low: ec.ParamState  # bfloat16
    mlp: eqx.nn.Linear  # a plain Equinox layer: its raw arrays count as `ParamState`s


def make_model(seed: int = 0, n_layers: int = 2) -> Model:
    rng = np.random.default_rng(seed)

    def arr(*shape, dtype=np.float32):
        return jnp.asarray(rng.standard_normal(shape).astype(dtype))

    layers = tuple(
        Linear(ec.ParamState({"weight": arr(3, 2), "bias": arr(2)}))
        for _ in range(n_layers)
    )
    return Model(
        layers=layers,
        h=ec.HiddenState(arr(4)),
        v=ec.HiddenState(arr(4) * u.mV),
        count=ec.LongTermState(jnp.asarray(rng.integers(-9, 9, (2,)), jnp.int32)),
        low=ec.ParamState(arr(3).astype(jnp.bfloat16)),
        mlp=eqx.nn.Linear(2, 2, key=jax.random.key(seed)),
    )


def leaves(x):
    """Arrays and units of a tree, for bit-exact comparisons."""
    out = []
    for leaf in jax.tree.leaves(x, is_leaf=lambda y: isinstance(y, u.Quantity)):
        if isinstance(leaf, u.Quantity):
            out.append(("unit", str(leaf.unit), leaf.unit.dim))
            leaf = leaf.mantissa
        leaf = np.asarray(leaf)
        out.append((leaf.dtype, leaf.shape, leaf.tobytes()))
    return out


def same(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and leaves(a) == leaves(b)


def random_like(x, rng):
    """A new random value with the structure, shapes, dtypes and units of `x`."""

    def one(leaf):
        if isinstance(leaf, u.Quantity):
            return one(leaf.mantissa) * leaf.unit
        leaf = np.asarray(leaf)
        if np.issubdtype(leaf.dtype, np.integer):
            return jnp.asarray(rng.integers(-100, 100, leaf.shape).astype(leaf.dtype))
        new = rng.standard_normal(leaf.shape).astype(np.float32)
        return jnp.asarray(new).astype(leaf.dtype)

    return jax.tree.map(one, x, is_leaf=lambda y: isinstance(y, u.Quantity))


# ------------------------------------------------------------- round trips


@given(seed=st.integers(0, 2**31), n_layers=st.integers(0, 3))
def test_own_snapshot_restores_with_empty_reports(seed, n_layers):
    model = make_model(seed, n_layers)
    snapshots = [
        ec.state_values(model),
        ec.leaf_values(model),
        {ec.path_str(k): v for k, v in ec.leaf_values(model).items()},
        {ec.path_str(k): v for k, v in ec.state_values(model).items()},
    ]
    for snapshot in snapshots:
        new, unexpected, missing = ec.assign_state_values(model, snapshot)
        assert unexpected == [] and missing == []
        assert same(new, model)
        assert type(new) is Model


@given(seed=st.integers(0, 2**31), level=st.sampled_from(["state", "leaf"]))
def test_assign_then_snapshot_gives_back_what_was_assigned(seed, level):
    model = make_model(0)
    rng = np.random.default_rng(seed)
    source = ec.state_values if level == "state" else ec.leaf_values
    new_values = {k: random_like(v, rng) for k, v in source(model).items()}
    result = ec.assign_state_values(model, new_values)
    assert result.unexpected == [] and result.missing == []
    got = source(result.model)
    assert got.keys() == new_values.keys()
    for k in new_values:
        assert same(got[k], new_values[k]), k
    # the input is untouched, and the raw arrays of the plain layer were assigned too
    assert same(ec.state_values(model), ec.state_values(make_model(0)))
    assert same(result.model.mlp.weight, new_values[("mlp", "weight")])
    assert type(result.model.mlp.weight) is jax.Array or isinstance(
        result.model.mlp.weight, jax.Array
    )


@given(data=st.data())
def test_random_subset_assigns_only_those_and_reports_the_rest(data):
    model = make_model(1, n_layers=2)
    snapshot = ec.leaf_values(model)
    keys = data.draw(st.lists(st.sampled_from(sorted(snapshot, key=str)), unique=True))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    given_values = {k: random_like(snapshot[k], rng) for k in keys}
    new, unexpected, missing = ec.assign_state_values(model, given_values)
    assert unexpected == []
    after = ec.leaf_values(new)
    for k, v in snapshot.items():
        assert same(after[k], given_values[k] if k in given_values else v), k

    # `missing`: the state-level path of an untouched state, the leaf paths of the
    # left-out leaves of a partly covered state
    expected_missing = []
    for path in ec.states(model):
        leaf_paths = [p for p in snapshot if p[: len(path)] == path]
        left = [p for p in leaf_paths if p not in given_values]
        if len(left) == len(leaf_paths):
            expected_missing.append(path)
        else:
            expected_missing.extend(left)
    assert missing == expected_missing


@given(data=st.data())
def test_every_key_form_assigns_the_same(data):
    # One mechanism for every key form: tuple or dotted, state- or leaf-level, NumPy
    # or JAX values; the same keys in any form give the same model and reports.
    model = make_model(2, n_layers=2)
    by_state, by_leaf = ec.state_values(model), ec.leaf_values(model)
    whole = data.draw(st.sets(st.sampled_from(sorted(by_state, key=str))))
    snapshot = {
        **{k: v for k, v in by_state.items() if k in whole},
        **{
            k: v for k, v in by_leaf.items() if not any(k[: len(w)] == w for w in whole)
        },
    }
    keys = data.draw(st.lists(st.sampled_from(sorted(snapshot, key=str)), unique=True))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    values = {k: random_like(snapshot[k], rng) for k in keys}

    def to_numpy(x):
        if isinstance(x, u.Quantity):
            return u.Quantity(np.asarray(x.mantissa), unit=x.unit)
        return np.asarray(x)

    as_numpy = jax.tree.map(
        to_numpy, values, is_leaf=lambda y: isinstance(y, u.Quantity)
    )
    dotted = {ec.path_str(k): v for k, v in values.items()}
    results = [ec.assign_state_values(model, v) for v in (values, as_numpy, dotted)]
    for r in results[1:]:
        assert same(r.model, results[0].model)
        assert r.missing == results[0].missing
    assert all(r.unexpected == [] for r in results)
    assert all(
        isinstance(x, jax.Array) for r in results for x in jax.tree.leaves(r.model)
    )


def test_missing_granularity_and_unexpected_order():
    model = make_model()
    result = ec.assign_state_values(
        model,
        {
            ("layers", 0, "weight", "bias"): jnp.zeros(2),
            "nope.1": 1,
            ("h",): jnp.zeros(4),
            ("nope",): 2,
            "nope.1 ": 3,
        },
    )
    assert result.unexpected == ["nope.1", ("nope",), "nope.1 "]
    assert result.missing == [
        ("layers", 0, "weight", "weight"),
        ("layers", 1, "weight"),
        ("v",),
        ("count",),
        ("low",),
        ("mlp", "weight"),
        ("mlp", "bias"),
    ]
    model2, unexpected, missing = result  # a named tuple
    assert model2 is result.model and unexpected is result.unexpected


def test_tutorial_snapshot_loop_restores_cleanly():
    """The tutorial's `state_snapshot` loop (dict values split by key)."""
    model = make_model(2)
    snapshot = snapshot_of(model)
    changed = ec.assign_state_values(model, ec.state_values(make_model(3))).model
    assert not same(changed, model)
    restored, unexpected, missing = ec.assign_state_values(changed, snapshot)
    assert unexpected == [] and missing == []
    assert same(ec.state_values(restored), ec.state_values(model))


# ----------------------------------------------------------- keys and precedence


def test_later_dicts_and_later_keys_win_across_granularities():
    model = make_model()
    a, b, c = jnp.full(2, 1.0), jnp.full(2, 2.0), jnp.full(2, 3.0)
    w = jnp.zeros((3, 2))
    bias = ("layers", 0, "weight", "bias")
    state = ("layers", 0, "weight")
    # state-level first, then leaf-level: the leaf wins
    new = ec.assign_state_values(model, {state: {"weight": w, "bias": a}}, {bias: b})
    assert np.array_equal(new.model.layers[0].weight.value["bias"], b)
    assert np.array_equal(new.model.layers[0].weight.value["weight"], w)
    # leaf-level first, then state-level: the state wins
    new = ec.assign_state_values(model, {bias: b}, {state: {"weight": w, "bias": a}})
    assert np.array_equal(new.model.layers[0].weight.value["bias"], a)
    # a tuple and a dotted string for the same leaf: the later one wins
    new = ec.assign_state_values(model, {bias: a, "layers.0.weight.bias": c})
    assert np.array_equal(new.model.layers[0].weight.value["bias"], c)
    new = ec.assign_state_values(model, {"layers.0.weight.bias": c}, {bias: a})
    assert np.array_equal(new.model.layers[0].weight.value["bias"], a)


def test_list_keys_and_string_entries_for_int_indices():
    model = make_model()
    new = ec.assign_state_values(
        model,
        {
            ("layers", "1", "weight", "bias"): jnp.ones(2),
            "layers.0.weight.bias": jnp.full(2, 5.0),
        },
    ).model
    assert np.array_equal(new.layers[1].weight.value["bias"], jnp.ones(2))
    assert np.array_equal(new.layers[0].weight.value["bias"], jnp.full(2, 5.0))


class Nested(eqx.Module):
    s: ec.State


def test_subtree_keys_of_nested_values_and_digit_dict_keys():
    model = Nested(
        ec.State({"a": {"x": jnp.zeros(2), "y": jnp.zeros(3)}, "0": jnp.zeros(1)})
    )
    result = ec.assign_state_values(
        model, {("s", "a"): {"x": jnp.ones(2), "y": jnp.ones(3)}, "s.0": jnp.ones(1)}
    )
    assert result.unexpected == [] and result.missing == []
    assert np.array_equal(result.model.s.value["a"]["y"], jnp.ones(3))
    assert np.array_equal(result.model.s.value["0"], jnp.ones(1))
    # a sub-tree of the wrong structure is refused, naming it
    with pytest.raises(ValueError, match=r"'s\.a'.*\['x', 'y'\].*\['x'\]"):
        ec.assign_state_values(model, {"s.a": {"x": jnp.ones(2)}})
    # a partly covered nested state reports its leaves
    result = ec.assign_state_values(model, {"s.a.x": jnp.ones(2)})
    assert result.missing == [("s", "0"), ("s", "a", "y")]


def test_ambiguous_dotted_key_is_an_error_and_the_tuple_works():
    model = Nested(ec.State({"a.b": jnp.zeros(1), "a": {"b": jnp.zeros(1)}}))
    with pytest.raises(ValueError, match="ambiguous"):
        ec.assign_state_values(model, {"s.a.b": jnp.ones(1)})
    new = ec.assign_state_values(model, {("s", "a.b"): jnp.ones(1)}).model
    assert np.array_equal(new.s.value["a.b"], jnp.ones(1))
    assert np.array_equal(new.s.value["a"]["b"], jnp.zeros(1))


def test_bad_keys_and_arguments_are_type_errors():
    model = make_model()
    with pytest.raises(TypeError, match="tuple path"):
        ec.assign_state_values(model, {3: jnp.zeros(1)})
    with pytest.raises(TypeError, match="contains 1.5"):
        ec.assign_state_values(model, {("h", 1.5): jnp.zeros(1)})
    with pytest.raises(TypeError, match="dicts from paths to values"):
        ec.assign_state_values(model, [("h", jnp.zeros(4))])
    with pytest.raises(TypeError, match="strict"):
        ec.assign_state_values(model, {}, strict="yes")


def test_plain_equinox_models_and_empty_states():
    mlp = eqx.nn.MLP(2, 2, 4, 1, key=jax.random.key(0))
    new, unexpected, missing = ec.assign_state_values(mlp, {"x": 1})
    assert new is mlp and unexpected == ["x"]
    assert missing == [("layers", i, n) for i in (0, 1) for n in ("weight", "bias")]
    other = eqx.nn.MLP(2, 2, 4, 1, key=jax.random.key(1))
    restored = ec.assign_state_values(other, ec.leaf_values(mlp), strict=True).model
    assert same(restored, mlp)
    with pytest.raises(ValueError, match="'layers.0.weight'.*float32\\[4,2\\]"):
        ec.assign_state_values(other, {"layers.0.weight": jnp.zeros((2, 4))})

    # a state holding no array (as `eqx.partition` leaves behind) is not a place
    model = Nested(ec.State(None))
    assert ec.states(model) == {}
    assert ec.assign_state_values(model, {}).missing == []
    assert ec.assign_state_values(model, {"s": None}).unexpected == ["s"]


def test_state_subclass_fields_tag_and_shared_are_kept():
    class Tagged(ec.HiddenState):
        extra: jax.Array

    model = Nested(Tagged(jnp.zeros(2), extra=jnp.ones(3), tag="t", shared=True))
    new = ec.assign_state_values(model, {"s": jnp.full(2, 7.0)}).model
    assert type(new.s) is Tagged
    assert new.s.tag == "t" and new.s.shared is True
    assert np.array_equal(new.s.extra, jnp.ones(3))
    assert np.array_equal(new.s.value, jnp.full(2, 7.0))
    assert np.array_equal(model.s.value, jnp.zeros(2))  # the input is untouched


# ------------------------------------------------------------------- the checks


def refused(model, values, *fragments):
    """Asserts that assigning refuses, with a message holding `fragments`, and that
    the model is unchanged."""
    before = leaves(model)
    with pytest.raises(ValueError) as info:
        ec.assign_state_values(model, values)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "nothing was assigned" in message
    assert leaves(model) == before
    return message


def test_shape_dtype_structure_mismatches_name_path_expected_and_given():
    model = make_model()
    refused(model, {"h": jnp.zeros(5)}, "'h'", "float32[4]", "float32[5]")
    refused(model, {"count": jnp.zeros(2)}, "'count'", "int32[2]", "float32[2]")
    refused(
        model,
        {"layers.1.weight": {"weight": jnp.zeros((3, 2))}},
        "'layers.1.weight'",
        "['bias', 'weight']",
        "['weight']",
    )
    refused(
        model,
        {"layers.0.weight.bias": {"x": jnp.zeros(2)}},
        "'layers.0.weight.bias'",
    )
    refused(model, {"h": [1.0, 2.0, 3.0, 4.0]}, "'h'")
    refused(model, {"h": "abc"}, "'h'", "float32[4]", "str")


def test_several_errors_are_all_listed_and_nothing_is_assigned():
    model = make_model()
    message = refused(
        model,
        {"h": jnp.zeros(4), "count": jnp.zeros(2), "low": jnp.zeros(4, jnp.bfloat16)},
        "'count'",
        "'low'",
    )
    assert "refused 2 value(s)" in message and "'h'" not in message


def test_safe_casts_only():
    model = make_model()
    # int16 -> int32 and bfloat16 -> float32 are safe: cast to the state's dtype
    new = ec.assign_state_values(
        model,
        {
            "count": np.array([1, 2], np.int16),
            "h": jnp.ones(4, jnp.bfloat16),
            "low": np.ones(3, jnp.bfloat16),
        },
    ).model
    assert new.count.value.dtype == jnp.int32 and isinstance(new.count.value, jax.Array)
    assert np.array_equal(new.count.value, [1, 2])
    assert new.h.value.dtype == jnp.float32
    assert new.low.value.dtype == jnp.bfloat16
    # unsafe: float64 numpy -> float32, float32 -> bfloat16, float -> int, int -> bool
    refused(model, {"h": np.zeros(4)}, "'h'", "float64[4]")
    refused(model, {"low": jnp.zeros(3)}, "'low'", "bfloat16[3]", "float32[3]")
    refused(model, {"count": jnp.zeros(2)}, "'count'")
    flag = Nested(ec.State(jnp.zeros((), bool)))
    refused(flag, {"s": jnp.zeros((), jnp.int32)}, "'s'", "bool[]")


def test_python_scalars_where_safe():
    model = Nested(
        ec.State({"f": jnp.zeros(()), "i": jnp.zeros((), jnp.int8), "b": jnp.bool_(0)})
    )
    new = ec.assign_state_values(model, {"s.f": 3, "s.i": 100, "s.b": True}).model
    assert new.s.value["f"].dtype == jnp.float32 and float(new.s.value["f"]) == 3.0
    assert new.s.value["i"].dtype == jnp.int8 and int(new.s.value["i"]) == 100
    assert new.s.value["b"].dtype == jnp.bool_ and bool(new.s.value["b"])
    new = ec.assign_state_values(model, {"s.f": 2.5, "s.i": True}).model
    assert float(new.s.value["f"]) == 2.5 and int(new.s.value["i"]) == 1
    refused(model, {"s.i": 2.5}, "'s.i'", "int8[]", "Python float 2.5")
    refused(model, {"s.i": 1000}, "'s.i'", "Python int 1000")
    refused(model, {"s.b": 1}, "'s.b'")
    refused(model, {"s.f": 1j}, "'s.f'")
    refused(Nested(ec.State(jnp.zeros((), jnp.float16))), {"s": 1e10}, "'s'")
    refused(model, {"s.f": np.float64(1.0)}, "'s.f'", "float64[]")


def test_units_are_converted_or_refused():
    model = make_model()
    volts = jnp.asarray([1.0, 2.0, 0.5, -1.0]) * u.volt
    new = ec.assign_state_values(model, {"v": volts}).model
    assert new.v.value.unit == u.mV
    assert np.allclose(new.v.value.mantissa, [1000.0, 2000.0, 500.0, -1000.0])
    assert new.v.value.mantissa.dtype == jnp.float32
    # same unit: the mantissa goes in unchanged
    same_unit = jnp.asarray([1.0, 2.0, 3.0, 4.0]) * u.mV
    new = ec.assign_state_values(model, {"v": same_unit}).model
    assert np.array_equal(new.v.value.mantissa, same_unit.mantissa)
    # incompatible dimension, unitless for a unit, unit for a unitless state
    refused(model, {"v": jnp.zeros(4) * u.ms}, "'v'", "mV", "ms")
    refused(model, {"v": jnp.zeros(4)}, "'v'", "with unit mV", "float32[4]")
    refused(model, {"h": jnp.zeros(4) * u.mV}, "'h'", "without a unit", "mV")


def test_unit_dtype_and_integer_rules():
    model = make_model()
    # a safe dtype in the same unit is fine; an unsafe one is refused
    new = ec.assign_state_values(model, {"v": jnp.ones(4, jnp.bfloat16) * u.mV}).model
    assert new.v.value.mantissa.dtype == jnp.float32
    refused(
        Nested(ec.State(jnp.zeros(2, jnp.bfloat16) * u.mV)),
        {"s": jnp.zeros(2) * u.mV},
        "'s'",
    )
    # an integer state takes only its own unit
    counts = Nested(ec.State(jnp.zeros(2, jnp.int32) * u.mV))
    new = ec.assign_state_values(counts, {"s": jnp.ones(2, jnp.int32) * u.mV}).model
    assert new.s.value.mantissa.dtype == jnp.int32
    refused(counts, {"s": jnp.ones(2, jnp.int32) * u.volt}, "'s'", "own unit")
    # a dimensionless scaled value into a plain state is converted
    plain = Nested(ec.State(jnp.zeros(2)))
    ratio = (jnp.ones(2) * u.mV) / u.volt
    new = ec.assign_state_values(plain, {"s": ratio}).model
    assert np.allclose(new.s.value, 1e-3)


def test_strict_raises_listing_unexpected_and_missing():
    model = make_model()
    snapshot = ec.leaf_values(model)
    assert ec.assign_state_values(model, snapshot, strict=True).missing == []
    partial = dict(snapshot)
    del partial[("layers", 1, "weight", "bias")]
    with pytest.raises(
        ValueError, match=r"1 missing key.*'layers', 1, 'weight', 'bias'"
    ):
        ec.assign_state_values(model, partial, strict=True)
    with pytest.raises(ValueError, match=r"1 unexpected key.*'extra'.*strict=False"):
        ec.assign_state_values(model, snapshot, {"extra": 1}, strict=True)
    with pytest.raises(ValueError, match="unexpected.*and 8 missing"):
        ec.assign_state_values(model, {"extra": 1}, strict=True)
    # without strict the same mismatches are only reported
    result = ec.assign_state_values(model, partial, {"extra": 1})
    assert result.unexpected == ["extra"]
    assert result.missing == [("layers", 1, "weight", "bias")]


_CORRUPTIONS = ["shape", "dtype", "unit", "structure", "unitless", "rank"]


@settings(max_examples=40)
@given(data=st.data())
def test_random_wrong_values_are_refused_naming_the_path(data):
    model = make_model(0)
    level = data.draw(st.sampled_from(["state", "leaf"]))
    snapshot = ec.state_values(model) if level == "state" else ec.leaf_values(model)
    key = data.draw(st.sampled_from(sorted(snapshot, key=str)))
    kind = data.draw(st.sampled_from(_CORRUPTIONS))
    value = snapshot[key]
    leaf_keys = [k for k in ec.leaf_values(model) if k[: len(key)] == key]
    # corrupt one leaf of the value
    flat, treedef = jax.tree.flatten(value, is_leaf=lambda y: isinstance(y, u.Quantity))
    j = data.draw(st.integers(0, len(flat) - 1))
    leaf = flat[j]
    unit = leaf.unit if isinstance(leaf, u.Quantity) else None
    m = leaf.mantissa if unit is not None else leaf
    if kind == "shape":
        m = jnp.zeros((m.shape[0] + 1, *m.shape[1:]), m.dtype)
    elif kind == "rank":
        m = jnp.zeros((*m.shape, 2), m.dtype)
    elif kind == "dtype":
        # int32 -> float32/bfloat16 and float32 -> int32 are not safe casts
        m = jnp.zeros(m.shape, jnp.int32 if m.dtype != jnp.int32 else jnp.float32)
    new_leaf = m if unit is None else m * unit
    if kind == "unit":
        new_leaf = (
            m * u.second if unit is None or unit.dim != u.second.dim else m * u.mV
        )
    elif kind == "unitless":
        new_leaf = m * u.mV if unit is None else m
    elif kind == "structure":
        new_leaf = {"extra": m}
    bad = dict(snapshot)
    bad[key] = jax.tree.unflatten(treedef, flat[:j] + [new_leaf] + flat[j + 1 :])
    where = leaf_keys[j] if kind != "structure" or len(leaf_keys) == 1 else key
    refused(model, bad, repr(ec.path_str(where)))


# ------------------------------------------------------------------ under jit


@settings(max_examples=5)
@given(seed=st.integers(0, 2**31), level=st.sampled_from(["state", "leaf"]))
def test_works_under_filter_jit_without_leaks(seed, level):
    model = make_model(0)
    source = ec.state_values if level == "state" else ec.leaf_values
    new_values = {
        k: random_like(v, np.random.default_rng(seed)) for k, v in source(model).items()
    }

    @eqx.filter_jit
    def restore(model, values):
        new, unexpected, missing = ec.assign_state_values(model, values)
        return new, len(unexpected), len(missing)

    with jax.checking_leaks():
        new, n_unexpected, n_missing = restore(model, new_values)
    eager = ec.assign_state_values(model, new_values).model
    assert n_unexpected == 0 and n_missing == 0
    assert same(new, eager)
    for k, v in new_values.items():
        assert same(source(new)[k], v)


def test_errors_raise_at_trace_time_under_jit():
    model = make_model()

    @eqx.filter_jit
    def restore(model, value):
        return ec.assign_state_values(model, {"h": value}).model

    with pytest.raises(ValueError, match="'h'.*float32\\[4\\].*float32\\[3\\]"):
        restore(model, jnp.zeros(3))
    assert same(restore(model, jnp.ones(4)).h.value, jnp.ones(4))


def test_jit_over_scan_carry():
    """Restoring inside a `lax.scan` body (values are tracers of the carry)."""
    model = make_model()
    snapshot = ec.state_values(model)

    def body(carry, _):
        params, static = carry
        m = eqx.combine(params, static)
        m = ec.assign_state_values(m, {"h": m.h.value + 1.0}).model
        return eqx.partition(m, eqx.is_array), None

    (params, static), _ = jax.lax.scan(
        body, eqx.partition(model, eqx.is_array), None, 3
    )
    out = eqx.combine(params, static)
    assert np.allclose(out.h.value, snapshot[("h",)] + 3.0)


# ------------------------------------------------------------------- ensembles


def test_stacked_ensemble_with_a_shared_state():
    members = [make_model(s) for s in range(3)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *members)
    shared = ec.LongTermState(jnp.arange(2, dtype=jnp.int32), shared=True)
    ensemble = eqx.tree_at(lambda m: m.count, stacked, shared)
    snapshot = ec.leaf_values(ensemble)
    assert snapshot[("h",)].shape == (3, 4) and snapshot[("count",)].shape == (2,)
    new, unexpected, missing = ec.assign_state_values(ensemble, snapshot)
    assert unexpected == [] and missing == [] and same(new, ensemble)
    assert new.count.shared is True
    # a member's value (no ensemble axis) is refused for the stacked state
    refused(ensemble, {"h": members[0].h.value}, "'h'", "float32[3,4]", "float32[4]")


# ------------------------------------------- with the library's own strategies


@given(data=st.data())
def test_snapshot_strategy_complete_partial_and_wrong(data):
    from eqx_collective.testing import assert_trees_equal, module_trees, snapshots

    model = data.draw(module_trees(max_depth=2))
    complete = data.draw(snapshots(model, "complete"))
    restored, unexpected, missing = ec.assign_state_values(model, complete.values)
    assert unexpected == [] and missing == []
    assert_trees_equal(restored, model)

    partial = data.draw(snapshots(model, "partial"))
    _, unexpected, missing = ec.assign_state_values(model, partial.values)
    assert unexpected == [] and missing == partial.missing

    if ec.states(model):
        wrong = data.draw(snapshots(model, "wrong"))
        with pytest.raises(
            ValueError, match=ec.path_str(wrong.wrong).replace(".", r"\.")
        ):
            ec.assign_state_values(model, wrong.values)


@given(stateful_pairs(), st.integers(0, 2**31), st.sampled_from(["state", "leaf"]))
def test_mixed_trees_round_trip_through_snapshots(pair, seed, level):
    # our states, raw arrays and `eqx.nn.State` values, each restored by its path
    source = ec.state_values if level == "state" else ec.leaf_values
    rng = np.random.default_rng(seed)
    values = {k: random_like(v, rng) for k, v in source(pair).items()}
    new, unexpected, missing = ec.assign_state_values(pair, values, strict=True)
    assert unexpected == [] and missing == []
    assert jax.tree.structure(new) == jax.tree.structure(pair)
    got = source(new)
    for k, v in values.items():
        assert same(got[k], v), k
    back = ec.assign_state_values(new, source(pair), strict=True).model
    assert same(back, pair)


def test_numpy_values_move_to_the_device_once_and_the_last_value_wins():
    model = {"w": ec.ParamState({"a": jnp.zeros(3), "b": jnp.zeros(3)})}
    host = np.arange(3, dtype=np.float32)
    device = jnp.full(3, 7.0, jnp.float32)
    # NumPy first, then a JAX array for the same leaf (and the reverse): the later wins
    new = ec.assign_state_values(model, {"w.a": host}, {"w.a": device}).model
    np.testing.assert_array_equal(new["w"].value["a"], device)
    new = ec.assign_state_values(model, {"w.a": device}, {"w.a": host}).model
    np.testing.assert_array_equal(new["w"].value["a"], host)
    # NumPy values, safely cast NumPy values and Python scalars become JAX arrays of the
    # state's dtype, on the device of the array they replace
    values = {"w.a": host, "w.b": np.ones(3, np.float16)}
    new = ec.assign_state_values(model, values).model
    for leaf in new["w"].value.values():
        assert isinstance(leaf, jax.Array) and leaf.dtype == jnp.float32
        assert leaf.devices() == model["w"].value["a"].devices()
    scalar = ec.assign_state_values({"n": ec.LongTermState(jnp.int32(0))}, {"n": 4})
    assert isinstance(scalar.model["n"].value, jax.Array)
    assert scalar.model["n"].value == 4
    # under `jax.jit`, NumPy values become constants of the traced model
    jitted = eqx.filter_jit(lambda m: ec.assign_state_values(m, values).model)
    with jax.checking_leaks():
        assert_trees_equal(jitted(model), ec.assign_state_values(model, values).model)


class State:
    """Stands for brainstate's `State` (not installed on every stack): a class named
    `State` holding a `value`."""

    def __init__(self, value):
        self.value = value


def test_a_state_object_given_for_its_value_is_named_as_such():
    model = make_model()
    ours = model.layers[0].weight  # an `ec.ParamState` itself, not its value
    theirs = State(model.h.value)
    cases = [
        ({"layers.0.weight": ours}, "'layers.0.weight'", "ParamState"),
        ({"h": theirs}, "'h'", "State"),
        ({"layers.0.weight": {"weight": ours, "bias": ours}}, "'layers.0.weight'", ""),
    ]
    for snapshot, where, name in cases:
        with pytest.raises(ValueError) as info:
            ec.assign_state_values(model, snapshot)
        message = str(info.value)
        assert f"at {where}: got a `{name}" in message, message
        assert "pass its `.value`" in message and "with leaves" not in message
    # what it holds goes in
    fixed = ec.assign_state_values(
        model, {"layers.0.weight": ours.value, "h": theirs.value}
    )
    assert fixed.unexpected == [] and fixed.converted == []


def test_converted_lists_the_leaves_assigned_with_a_cast_or_a_unit_conversion():
    model = make_model()
    result = ec.assign_state_values(
        model,
        {
            "layers.0.weight.bias": np.zeros(
                model.layers[0].weight.value["bias"].shape, np.float16
            )
        },
        {"layers.1.weight.bias": jnp.zeros_like(model.layers[1].weight.value["bias"])},
    )
    assert result.converted == [("layers", 0, "weight", "bias")]
    model2, unexpected, missing = result
    assert model2 is result.model
