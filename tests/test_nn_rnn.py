import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_collective as ec
from eqx_collective import nn
from eqx_collective.testing import assert_trees_equal


CELLS = [nn.ValinaRNNCell, nn.GRUCell, nn.LSTMCell]


def _names(cls):
    return cls.__name__


def _params(linear):
    p = linear.weight.value
    return np.asarray(p["weight"]), np.asarray(p["bias"])


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _reference_step(cell, x, h, c=None):
    """One step written out in NumPy, following brainstate's `_rnns.py`."""
    x, h = np.asarray(x), np.asarray(h)
    if isinstance(cell, nn.ValinaRNNCell):
        w, b = _params(cell.W)
        return np.maximum(np.concatenate([x, h], -1) @ w + b, 0), None
    if isinstance(cell, nn.GRUCell):
        wrz, brz = _params(cell.Wrz)
        wh, bh = _params(cell.Wh)
        gates = _sigmoid(np.concatenate([x, h], -1) @ wrz + brz)
        r, z = gates[..., : cell.num_out], gates[..., cell.num_out :]
        cand = np.tanh(np.concatenate([x, r * h], -1) @ wh + bh)
        return (1 - z) * h + z * cand, None
    w, b = _params(cell.W)
    n = cell.num_out
    ifgo = np.concatenate([x, h], -1) @ w + b
    i, g, f, o = (ifgo[..., k * n : (k + 1) * n] for k in range(4))
    c = _sigmoid(f + 1.0) * np.asarray(c) + _sigmoid(i) * np.tanh(g)
    return _sigmoid(o) * np.tanh(c), c


def _random_cell(cls, key, num_in=3, num_out=5, batch_size=4, **kwargs):
    k1, k2 = jax.random.split(key)
    cell = cls(num_in, num_out, b_init=nn.Normal(0.0, 0.5), **kwargs, key=k1)
    return cell.init_state(batch_size, key=k2) if batch_size else cell


@pytest.mark.parametrize("cls", CELLS, ids=_names)
def test_step_matches_the_reference(cls, getkey):
    cell = _random_cell(cls, getkey(), state_init=nn.Normal())
    x = jax.random.normal(getkey(), (4, 3))
    h_ref, c_ref = _reference_step(
        cell, x, cell.h.value, getattr(cell, "c", None) and cell.c.value
    )
    h, new = cell(x)
    np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(new.h.value, h)
    if c_ref is not None:
        np.testing.assert_allclose(new.c.value, c_ref, rtol=1e-5, atol=1e-6)
    for name in ("W", "Wrz", "Wh"):  # a step leaves the parameters alone
        if hasattr(cell, name):
            assert_trees_equal(getattr(new, name), getattr(cell, name))


@pytest.mark.parametrize("cls", CELLS, ids=_names)
def test_init_state_shapes(cls, key):
    cell = cls(3, 5, key=key)
    assert cell.h is None
    single = cell.init_state()
    assert isinstance(single.h, ec.HiddenState) and single.h.value.shape == (5,)
    batched = ec.init_all_states(cell, batch_size=2)
    assert batched.h.value.shape == (2, 5)
    assert not np.any(np.asarray(batched.h.value))  # ZeroInit by default
    if cls is nn.LSTMCell:
        assert batched.c.value.shape == (2, 5)
    assert cell.h is None  # pure: the original is untouched
    h, _ = single(jnp.ones(3))
    assert h.shape == (5,)


@pytest.mark.parametrize("cls", CELLS, ids=_names)
def test_reset_keeps_the_batch_shape(cls, getkey):
    cell = ec.init_all_states(cls(8, 16, key=getkey()), batch_size=2)
    _, cell = cell(jax.random.normal(getkey(), (2, 8)))
    assert np.any(np.asarray(cell.h.value))
    reset = ec.reset_all_states(cell)
    assert reset.h.value.shape == (2, 16)
    assert not np.any(np.asarray(reset.h.value))
    if cls is nn.LSTMCell:
        assert reset.c.value.shape == (2, 16) and not np.any(np.asarray(reset.c.value))
    assert ec.reset_all_states(cell, batch_size=5).h.value.shape == (5, 16)
    single = cell.init_state()
    assert single.reset_state().h.value.shape == (16,)


def test_reset_restores_a_random_initial_state(getkey):
    cell = nn.ValinaRNNCell(2, 3, state_init=nn.Normal(), key=getkey())
    k = getkey()
    initial = ec.init_all_states(cell, batch_size=2, key=k)
    _, stepped = initial(jnp.ones((2, 2)))
    reset = ec.reset_all_states(stepped, key=k)
    np.testing.assert_array_equal(reset.h.value, initial.h.value)
    other = ec.init_all_states(cell, batch_size=2, key=getkey())
    assert not np.array_equal(other.h.value, initial.h.value)
    with pytest.raises(ValueError, match="needs a random `key`"):
        ec.init_all_states(cell, batch_size=2)


def test_reset_keeps_the_state_tag(key):
    cell = nn.ValinaRNNCell(2, 3, key=key).init_state(2)
    cell = eqx.tree_at(lambda c: c.h, cell, ec.HiddenState(cell.h.value, tag="rnn"))
    assert cell.reset_state().h.tag == "rnn"
    assert cell.init_state(4).h.tag == "rnn"


@pytest.mark.parametrize("cls", CELLS, ids=_names)
def test_uninitialised_cell(cls, key):
    cell = cls(3, 5, key=key)
    with pytest.raises(RuntimeError, match="init_all_states"):
        cell(jnp.ones(3))
    with pytest.raises(RuntimeError, match="never initialised"):
        cell.reset_state()


@pytest.mark.parametrize("cls", CELLS, ids=_names)
def test_bad_inputs(cls, key):
    cell = cls(3, 5, key=key).init_state(2)
    with pytest.raises(ValueError, match=r"size 3 .* shape \(2, 4\)"):
        cell(jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"batch shape \(7,\)"):
        cell(jnp.ones((7, 3)))
    with pytest.raises(ValueError, match="positive integer `num_in`"):
        cls(0, 5, key=key)
    with pytest.raises(ValueError, match="positive integer `num_out`"):
        cls(3, -1, key=key)
    with pytest.raises(ValueError, match="positive integer `batch_size`"):
        cell.init_state(0)
    with pytest.raises(TypeError, match="positive integer `batch_size`"):
        cell.init_state(2.0)
    with pytest.raises(TypeError, match="positive integer `batch_size`"):
        cell.init_state(True)
    assert cell.init_state(np.int64(4)).h.value.shape[:-1] == (4,)


def test_activation(getkey):
    key = getkey()
    by_name = _random_cell(nn.ValinaRNNCell, key, activation="tanh")
    by_fn = _random_cell(nn.ValinaRNNCell, key, activation=jnp.tanh)
    x = jax.random.normal(getkey(), (4, 3))
    np.testing.assert_allclose(by_name(x)[0], by_fn(x)[0], rtol=1e-6)
    assert np.any(np.asarray(by_name(x)[0]) < 0)  # tanh, not the default relu
    with pytest.raises(ValueError, match="unknown activation"):
        nn.ValinaRNNCell(2, 3, activation="not_a_function", key=key)


def test_vanilla_alias_and_printing(key):
    assert nn.VanillaRNNCell is nn.ValinaRNNCell
    cell = ec.init_all_states(nn.ValinaRNNCell(8, 16, key=key), batch_size=2)
    text = eqx.tree_pformat(cell)
    assert "ParamState(value={'bias': f32[16], 'weight': f32[24,16]})" in text
    assert "h=HiddenState(value=f32[2,16])" in text
    assert cell.in_size == (8,) and cell.out_size == (16,)
    assert isinstance(cell, nn.RNNCell) and nn.is_stateful(cell)


@pytest.mark.parametrize("cls", CELLS, ids=_names)
def test_scan_under_jit_equals_a_python_loop(cls, getkey):
    cell = _random_cell(cls, getkey(), batch_size=2)
    xs = jax.random.normal(getkey(), (6, 2, 3))
    dynamic, static = eqx.partition(cell, eqx.is_array)

    @eqx.filter_jit
    def run(dynamic, xs):
        def step(dynamic, x):
            h, new = eqx.combine(dynamic, static)(x)
            return eqx.filter(new, eqx.is_array), h

        return jax.lax.scan(step, dynamic, xs)

    with jax.checking_leaks():
        final, hs = run(dynamic, xs)
    final = eqx.combine(final, static)
    loop, expected = cell, []
    for x in xs:
        h, loop = loop(x)
        expected.append(h)
    np.testing.assert_allclose(hs, np.stack(expected), rtol=1e-5, atol=1e-6)
    assert_trees_equal(final, loop, rtol=1e-5, atol=1e-6)


def test_gradient_through_a_sequence(getkey):
    cell = _random_cell(nn.LSTMCell, getkey(), batch_size=2)
    xs = jax.random.normal(getkey(), (4, 2, 3))

    @eqx.filter_grad
    def grad(cell):
        for x in xs:
            h, cell = cell(x)
        return jnp.sum(h**2)

    g = grad(cell)
    gw = np.asarray(g.W.weight.value["weight"])
    assert gw.shape == (8, 20) and np.all(np.isfinite(gw)) and np.any(gw != 0)


# Units ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CELLS, ids=_names)
def test_units_survive_init_step_reset_jit_and_vmap(cls, getkey):
    cell = cls(3, 5, state_init=nn.Normal(-65.0, 1.0, unit=u.mV), key=getkey())
    names = ["h", "c"] if cls is nn.LSTMCell else ["h"]
    cell = ec.init_all_states(cell, batch_size=2, key=getkey())
    x = jax.random.normal(getkey(), (2, 3))

    def check(model, shape=(2, 5)):
        for name in names:
            value = getattr(model, name).value
            assert isinstance(value, u.Quantity) and value.unit == u.mV, name
            assert value.shape == shape

    check(cell)
    # The step is computed on the numbers in mV; the unit is put back.
    plain = eqx.tree_at(
        lambda c: [getattr(c, n).value for n in names],
        cell,
        [getattr(cell, n).value.mantissa for n in names],
    )
    h, stepped = cell(x)
    h_plain, stepped_plain = plain(x)
    assert h.unit == u.mV
    np.testing.assert_allclose(h.mantissa, h_plain, rtol=1e-6)
    check(stepped)
    check(ec.reset_all_states(stepped, key=getkey()))
    with jax.checking_leaks():
        h_jit, stepped_jit = eqx.filter_jit(lambda c, x: c(x))(cell, x)
    assert h_jit.unit == u.mV
    np.testing.assert_allclose(h_jit.mantissa, h.mantissa, rtol=1e-6)
    check(stepped_jit)
    # An ensemble of 3 cells built with filter_vmap.
    keys = jax.random.split(getkey(), 3)
    ensemble = eqx.filter_vmap(lambda k: ec.init_all_states(cell, batch_size=2, key=k))(
        keys
    )
    check(ensemble, (3, 2, 5))
    hs, ensemble = eqx.filter_vmap(lambda c: c(x))(ensemble)
    assert hs.unit == u.mV and hs.shape == (3, 2, 5)
    check(ensemble, (3, 2, 5))
    reset = eqx.filter_vmap(lambda c, k: c.reset_state(key=k))(ensemble, keys)
    check(reset, (3, 2, 5))


def test_quantity_inputs_are_converted_to_the_state_unit(getkey):
    cell = nn.ValinaRNNCell(2, 3, state_init=nn.ZeroInit(unit=u.mV), key=getkey())
    cell = cell.init_state(1)
    x = jnp.array([[0.5, -1.5]])
    h_mv, _ = cell(u.Quantity(x, unit=u.mV))
    h_v, _ = cell(u.Quantity(x / 1000, unit=u.volt))
    h_plain, _ = cell(x)
    np.testing.assert_allclose(h_v.mantissa, h_mv.mantissa, rtol=1e-5)
    np.testing.assert_allclose(h_plain.mantissa, h_mv.mantissa, rtol=1e-6)
    with pytest.raises(ValueError, match="cannot be converted"):
        cell(u.Quantity(x, unit=u.second))


def test_weights_with_units_are_refused(key):
    with pytest.raises(ValueError, match="must be unitless"):
        nn.ValinaRNNCell(2, 3, w_init=nn.XavierNormal(unit=u.mS), key=key)


@pytest.mark.parametrize("cls", CELLS, ids=_names)
def test_unitless_quantity_parameters_step_as_plain_numbers(cls, key):
    def quantity(shape, key=None, dtype=None):  # a user's initialiser
        return u.Quantity(jnp.full(shape, 0.1))

    cell = cls(2, 3, w_init=quantity, b_init=quantity, key=key).init_state()
    linear = cell.Wrz if cls is nn.GRUCell else cell.W
    assert isinstance(linear.weight.value["bias"], u.Quantity)  # kept as given
    plain = cls(2, 3, w_init=nn.Constant(0.1), b_init=nn.Constant(0.1), key=key)
    h, _ = cell(jnp.ones(2))
    expected, _ = plain.init_state()(jnp.ones(2))
    assert not isinstance(h, u.Quantity)
    np.testing.assert_allclose(h, expected, rtol=1e-6)


def test_vmap_init_all_states_builds_an_ensemble_of_cells(key):
    cell = nn.ValinaRNNCell(4, 8, state_init=nn.ZeroInit(unit=u.mV), key=key)
    ensemble = ec.vmap_init_all_states(cell, batch_size=2, axis_size=3, key=key)
    assert ensemble.h.value.shape == (3, 2, 8) and ensemble.h.value.unit == u.mV
    assert ensemble.W.weight.value["weight"].shape == (3, 12, 8)
    reset = ec.vmap_reset_all_states(ensemble)
    assert reset.h.value.shape == (3, 2, 8) and reset.h.value.unit == u.mV


def test_each_cell_gets_its_own_key_from_init_all_states(key):
    cell = nn.ValinaRNNCell(2, 3, state_init=nn.Normal(), key=key)
    model = nn.Sequential(cell, cell)
    model = ec.init_all_states(model, batch_size=np.int64(2), key=jax.random.key(1))
    h0, h1 = model[0].h.value, model[1].h.value
    assert h0.shape == h1.shape == (2, 3)
    assert not np.array_equal(h0, h1)
    again = ec.init_all_states(
        nn.Sequential(cell, cell), batch_size=2, key=jax.random.key(1)
    )
    assert_trees_equal(again, model)
    skipped = ec.init_all_states(
        nn.Sequential(nn.ReLU(), cell), node_to_exclude=nn.RNNCell, key=key
    )
    assert skipped[1].h is None


@pytest.mark.parametrize("cls", CELLS, ids=_names)
def test_sizes_positional_the_rest_keyword_only(cls, key):
    cell = cls(3, 5, key=key)
    assert (cell.num_in, cell.num_out) == (3, 5)
    with pytest.raises(TypeError):
        cls(3, 5, nn.ZeroInit(), key=key)


def test_single_state_cells_share_one_base():
    base = nn.ValinaRNNCell.__mro__[1]
    assert base is nn.GRUCell.__mro__[1] and base is not nn.RNNCell
    assert issubclass(base, nn.RNNCell) and not issubclass(nn.LSTMCell, base)
    for cls in CELLS:
        assert "_step" not in vars(nn.RNNCell)
        assert ("init_state" in vars(cls)) == (cls is nn.LSTMCell)


@pytest.mark.parametrize("cls", CELLS, ids=_names)
def test_state_init_is_static_and_hashable(cls, key):
    cell = cls(3, 5, state_init=nn.Normal(0.0, 0.5), key=key)
    assert nn.Normal(0.0, 0.5) not in jax.tree_util.tree_leaves(cell)
    # Members built separately have equal structures (a stackable ensemble).
    other = cls(3, 5, state_init=nn.Normal(np.float32(0.0), jnp.asarray(0.5)), key=key)
    assert jax.tree.structure(cell) == jax.tree.structure(other)
    members = [
        cls(3, 5, state_init=nn.Normal(0.0, 0.5), key=k)
        for k in jax.random.split(key, 3)
    ]
    ensemble = ec.stack(members)
    assert ec.ensemble_size(ensemble) == 3
    ready = eqx.filter_jit(lambda c, k: c.init_state(2, key=k))(cell, key)
    assert ready.h.value.shape == (2, 5)


def test_an_array_state_init_is_a_constant(key):
    cell = nn.ValinaRNNCell(2, 3, state_init=jnp.asarray([1.0, 2.0, 3.0]), key=key)
    assert isinstance(cell.state_init, nn.Constant)
    np.testing.assert_array_equal(cell.init_state(2).h.value, [[1, 2, 3]] * 2)


def test_an_unhashable_state_init_is_refused(key):
    with pytest.raises(TypeError, match="must be hashable"):
        nn.ValinaRNNCell(2, 3, state_init=nn.Normal(jnp.zeros(3)), key=key)


def test_a_private_method_binds_as_an_equinox_method(getkey):
    # `cell._step` is a pytree holding the cell (as every Equinox bound method), so a
    # filtered jit traces it once for every cell of one shape.
    traces = []

    @eqx.filter_jit
    def run(step, x, h):
        traces.append(None)
        return step(x, h)

    x, h = jnp.ones((2, 3)), jnp.zeros((2, 4))
    cells = [nn.GRUCell(3, 4, key=getkey()) for _ in range(3)]
    outs = [run(cell._step, x, h) for cell in cells]
    assert len(traces) == 1
    assert not jnp.array_equal(outs[0], outs[1])  # each cell's own weights
    assert jax.tree_util.tree_leaves(cells[0]._step) == jax.tree_util.tree_leaves(
        cells[0]
    )
