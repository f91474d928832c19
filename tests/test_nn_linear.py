import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_collective as ec
from eqx_collective import nn
from eqx_collective.testing import assert_trees_equal


def test_parameters_live_in_one_param_state(key):
    layer = nn.Linear(24, 16, key=key)
    assert layer.in_size == (24,) and layer.out_size == (16,)
    assert isinstance(layer.weight, ec.ParamState)
    params = layer.weight.value
    assert set(params) == {"weight", "bias"}
    assert params["weight"].shape == (24, 16) and params["bias"].shape == (16,)
    assert params["weight"].dtype == jnp.float32
    assert list(ec.states(layer)) == [("weight",)]
    assert set(ec.leaf_values(layer)) == {("weight", "weight"), ("weight", "bias")}


def test_sizes_as_ints_or_one_tuples(key):
    assert_trees_equal(nn.Linear((24,), (16,), key=key), nn.Linear(24, 16, key=key))


def test_deterministic_per_key(key):
    a, b = nn.Linear(8, 4, key=key), nn.Linear(8, 4, key=key)
    assert_trees_equal(a, b)
    c = nn.Linear(8, 4, key=jax.random.key(99))
    assert not np.array_equal(a.weight.value["weight"], c.weight.value["weight"])


def test_default_initialisers():
    layer = nn.Linear(512, 256, key=jax.random.key(0))
    w = np.asarray(layer.weight.value["weight"])
    assert w.var() == pytest.approx(2 / 512, rel=0.03)  # Kaiming normal, fan-in
    assert not np.any(np.asarray(layer.weight.value["bias"]))  # zeros


def test_forward_is_x_at_w_plus_b(key, getkey):
    layer = nn.Linear(24, 16, b_init=nn.Normal(), key=key)
    w, b = map(np.asarray, (layer.weight.value["weight"], layer.weight.value["bias"]))
    for shape in [(24,), (4, 24), (2, 3, 24)]:
        x = jax.random.normal(getkey(), shape)
        y = layer(x)
        assert y.shape == shape[:-1] + (16,)
        np.testing.assert_allclose(y, np.asarray(x) @ w + b, rtol=1e-5, atol=1e-5)


def test_no_bias(key, getkey):
    layer = nn.Linear(6, 3, b_init=None, key=key)
    assert set(layer.weight.value) == {"weight"}
    x = jax.random.normal(getkey(), (2, 6))
    np.testing.assert_allclose(layer(x), x @ layer.weight.value["weight"], rtol=1e-6)


def test_custom_initialisers_and_arrays():
    layer = nn.Linear(3, 2, nn.Constant(0.5), nn.Constant(1.0), key=None)
    np.testing.assert_array_equal(layer(jnp.ones(3)), [2.5, 2.5])
    w = jnp.arange(6.0).reshape(3, 2)
    layer = nn.Linear(3, 2, w, jnp.array([1.0, -1.0]), key=None)
    np.testing.assert_array_equal(layer(jnp.ones(3)), [7.0, 8.0])
    with pytest.raises(ValueError, match=r"must have shape \(3, 2\)"):
        nn.Linear(3, 2, jnp.ones((2, 3)), key=None)
    with pytest.raises(ValueError, match="needs a random `key`"):
        nn.Linear(3, 2, key=None)  # the default KaimingNormal is random


def test_wrong_input_size(key):
    layer = nn.Linear(24, 16, key=key)
    with pytest.raises(ValueError, match=r"size 24 .* shape \(4, 23\)"):
        layer(jnp.ones((4, 23)))
    with pytest.raises(ValueError, match="last axis has size 24"):
        layer(jnp.ones(()))


@pytest.mark.parametrize("size", [0, -3, (2, 3), ()])
def test_bad_sizes(size, key):
    with pytest.raises(ValueError, match="`Linear`"):
        nn.Linear(size, 4, key=key)
    with pytest.raises(ValueError, match="`Linear`"):
        nn.Linear(4, size, key=key)


@pytest.mark.parametrize("size", [2.5, "3", True, None])
def test_sizes_of_the_wrong_type(size, key):
    with pytest.raises(TypeError, match="`in_size`"):
        nn.Linear(size, 4, key=key)


def test_print(key):
    text = eqx.tree_pformat(nn.Linear(24, 16, key=key))
    assert "in_size=(24,)" in text and "out_size=(16,)" in text
    assert "ParamState(value={'bias': f32[16], 'weight': f32[24,16]})" in text


def test_no_hidden_state_so_collective_ops_leave_it_alone(key):
    layer = nn.Linear(4, 3, key=key)
    assert layer.init_state(4, key=key) is layer and layer.reset_state() is layer
    assert_trees_equal(ec.call_all_fns(layer, "init_state", kwargs={"a": 1}), layer)
    assert_trees_equal(ec.init_all_states(layer, batch_size=4, key=key), layer)
    assert_trees_equal(ec.reset_all_states(layer), layer)


def test_units_multiply_through(key):
    layer = nn.Linear(3, 2, nn.Normal(unit=u.mS), nn.Constant(2.0, unit=u.uA), key=key)
    assert layer.weight.value["weight"].unit == u.mS
    x = u.Quantity(jnp.array([1.0, -2.0, 0.5]), unit=u.mV)
    y = layer(x)
    assert isinstance(y, u.Quantity)
    w = np.asarray(layer.weight.value["weight"].mantissa)
    expected = np.asarray(x.to_decimal(u.mV)) @ w  # mV * mS = uA
    np.testing.assert_allclose(y.to_decimal(u.uA), expected + 2.0, rtol=1e-5)
    with pytest.raises(ValueError, match="has unit uA but the bias has unit mV"):
        nn.Linear(3, 2, nn.Normal(unit=u.mS), nn.Constant(2.0, unit=u.mV), key=key)(x)


def test_jit_grad_and_vmap(key, getkey):
    layer = nn.Linear(5, 3, key=key)
    x = jax.random.normal(getkey(), (7, 5))

    @eqx.filter_jit
    @eqx.filter_grad
    def grad(model, x):
        return jnp.sum(model(x) ** 2)

    with jax.checking_leaks():
        g = grad(layer, x)
    w, b = map(np.asarray, (layer.weight.value["weight"], layer.weight.value["bias"]))
    x = np.asarray(x)
    y = x @ w + b
    np.testing.assert_allclose(g.weight.value["weight"], 2 * x.T @ y, rtol=1e-4)
    np.testing.assert_allclose(g.weight.value["bias"], 2 * y.sum(0), rtol=1e-4)

    keys = jax.random.split(key, 4)
    ensemble = eqx.filter_vmap(lambda k: nn.Linear(5, 3, key=k))(keys)
    assert ensemble.weight.value["weight"].shape == (4, 5, 3)
    ys = eqx.filter_vmap(lambda m: m(x))(ensemble)
    assert ys.shape == (4, 7, 3)
    np.testing.assert_allclose(ys[2], nn.Linear(5, 3, key=keys[2])(x), rtol=1e-6)


def test_unit_mismatch_with_the_bias_is_refused_eagerly_and_under_jit():
    layer = nn.Linear(3, 2, key=jax.random.key(0))  # unitless zero bias
    x = u.Quantity(jnp.ones(3), u.mV)
    with pytest.raises(ValueError, match="cannot be added"):
        layer(x)
    with pytest.raises(ValueError, match="cannot be added"):
        eqx.filter_jit(lambda m, x: m(x))(layer, x)
    y = nn.Linear(3, 2, b_init=None, key=jax.random.key(0))(x)
    assert u.get_unit(y) == u.mV
    y = nn.Linear(3, 2, b_init=nn.ZeroInit(unit=u.mV), key=jax.random.key(0))(x)
    assert u.get_unit(y) == u.mV
