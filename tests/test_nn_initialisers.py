import dataclasses

import brainunit as u
import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

from eqx_collective import nn


RANDOM = [
    nn.Normal(),
    nn.Uniform(),
    nn.TruncatedNormal(),
    nn.VarianceScaling(),
    nn.KaimingNormal(),
    nn.KaimingUniform(),
    nn.XavierNormal(),
    nn.XavierUniform(),
    nn.Orthogonal(),
]
DETERMINISTIC = [nn.ZeroInit(), nn.Constant(0.5)]
FAN_BASED = (nn.VarianceScaling, nn.Orthogonal)


def _name(init):
    return type(init).__name__


def test_zero_init():
    out = nn.ZeroInit()((2, 3))
    assert isinstance(out, jax.Array)
    assert out.shape == (2, 3) and out.dtype == jnp.float32
    assert not np.any(np.asarray(out))
    assert nn.ZeroInit()(4).shape == (4,)
    assert nn.ZeroInit()((), dtype=jnp.int32).dtype == jnp.int32


def test_constant():
    np.testing.assert_array_equal(nn.Constant(0.5)((2, 2)), np.full((2, 2), 0.5))
    np.testing.assert_array_equal(nn.Constant()(3), np.ones(3))
    row = nn.Constant(jnp.array([1.0, 2.0, 3.0]))((2, 3))
    np.testing.assert_array_equal(row, [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="cannot be broadcast"):
        nn.Constant(jnp.array([1.0, 2.0]))((2, 3))


def test_constant_with_a_quantity_value():
    own = nn.Constant(u.Quantity(-65.0, unit=u.mV))(3)
    assert isinstance(own, u.Quantity) and own.unit == u.mV
    np.testing.assert_allclose(own.mantissa, [-65.0] * 3)
    converted = nn.Constant(u.Quantity(-0.065, unit=u.volt), unit=u.mV)(2)
    assert converted.unit == u.mV
    np.testing.assert_allclose(converted.mantissa, [-65.0, -65.0], rtol=1e-6)
    with pytest.raises(ValueError, match="cannot be expressed"):
        nn.Constant(u.Quantity(1.0, unit=u.second), unit=u.mV)(2)


@pytest.mark.parametrize("init", RANDOM, ids=_name)
def test_random_initialisers_need_a_key(init):
    with pytest.raises(ValueError, match="needs a random `key`"):
        init((4, 3))


@pytest.mark.parametrize("init", RANDOM, ids=_name)
def test_deterministic_for_a_given_key(init):
    k1, k2 = jax.random.key(1), jax.random.key(2)
    a, b, c = init((6, 5), key=k1), init((6, 5), key=k1), init((6, 5), key=k2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("init", DETERMINISTIC, ids=_name)
def test_deterministic_initialisers_ignore_the_key(init):
    np.testing.assert_array_equal(init((3, 2)), init((3, 2), key=jax.random.key(5)))


def test_normal_statistics():
    w = np.asarray(nn.Normal(mean=1.5, scale=0.5)((400, 500), key=jax.random.key(0)))
    assert abs(w.mean() - 1.5) < 0.01
    assert abs(w.std() - 0.5) < 0.01


def test_uniform_statistics():
    w = np.asarray(nn.Uniform(-2.0, 4.0)((400, 500), key=jax.random.key(0)))
    assert w.min() >= -2.0 and w.max() < 4.0
    assert abs(w.mean() - 1.0) < 0.02
    assert abs(w.var() - 36.0 / 12) < 0.03


def test_truncated_normal_statistics():
    init = nn.TruncatedNormal(loc=1.0, scale=2.0, lower=-1.0, upper=1.5)
    w = np.asarray(init((400, 500), key=jax.random.key(0)))
    assert w.min() >= 1.0 - 2.0 and w.max() <= 1.0 + 3.0
    # Mean of a standard normal truncated to [-1, 1.5]: (phi(-1) - phi(1.5)) / Z.
    phi = lambda t: np.exp(-(t**2) / 2) / np.sqrt(2 * np.pi)
    from math import erf, sqrt

    cdf = lambda t: 0.5 * (1 + erf(t / sqrt(2)))
    expected = 1.0 + 2.0 * (phi(-1.0) - phi(1.5)) / (cdf(1.5) - cdf(-1.0))
    assert abs(w.mean() - expected) < 0.01


@pytest.mark.parametrize(
    "init, reference",
    [
        (nn.KaimingNormal(), jax.nn.initializers.he_normal()),
        (nn.KaimingUniform(), jax.nn.initializers.he_uniform()),
        (nn.XavierNormal(), jax.nn.initializers.glorot_normal()),
        (nn.XavierUniform(), jax.nn.initializers.glorot_uniform()),
        (
            nn.VarianceScaling(0.5, "fan_geo_avg", "normal"),
            jax.nn.initializers.variance_scaling(0.5, "fan_geo_avg", "normal"),
        ),
        (nn.Orthogonal(scale=2.0), jax.nn.initializers.orthogonal(2.0)),
    ],
    ids=lambda x: _name(x) if isinstance(x, nn.Initialiser) else "",
)
def test_matches_jax_initializers(init, reference):
    key = jax.random.key(3)
    for shape in [(37, 23), (3, 4, 5)]:
        np.testing.assert_allclose(
            init(shape, key=key), reference(key, shape, jnp.float32), rtol=1e-6
        )


@pytest.mark.parametrize(
    "init, variance",
    [
        (nn.KaimingNormal(), lambda i, o: 2 / i),
        (nn.KaimingNormal(mode="fan_out"), lambda i, o: 2 / o),
        (nn.KaimingUniform(), lambda i, o: 2 / i),
        (nn.XavierNormal(), lambda i, o: 2 / (i + o)),
        (nn.XavierUniform(), lambda i, o: 2 / (i + o)),
        (nn.VarianceScaling(3.0, "fan_avg", "normal"), lambda i, o: 6 / (i + o)),
        (
            nn.VarianceScaling(1.0, "fan_geo_avg", "normal"),
            lambda i, o: 1 / np.sqrt(i * o),
        ),
    ],
    ids=lambda x: repr(x) if isinstance(x, nn.Initialiser) else "",
)
def test_variance_follows_the_fan_rules(init, variance):
    fan_in, fan_out = 500, 200
    w = np.asarray(init((fan_in, fan_out), key=jax.random.key(0)))
    assert abs(w.mean()) < 0.01 * np.sqrt(variance(fan_in, fan_out)) * 10
    assert w.var() == pytest.approx(variance(fan_in, fan_out), rel=0.02)


def test_uniform_variance_scaling_bounds():
    w = np.asarray(nn.KaimingUniform()((300, 100), key=jax.random.key(0)))
    bound = np.sqrt(6 / 300)
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.99 * bound


def test_truncated_variance_scaling_is_truncated_at_two_stddevs():
    w = np.asarray(nn.KaimingNormal()((300, 100), key=jax.random.key(0)))
    stddev = np.sqrt(2 / 300) / 0.87962566103423978
    assert np.abs(w).max() <= 2 * stddev * (1 + 1e-6)


def test_receptive_field_counts_in_the_fans():
    # A conv-like (h, w, in, out) weight: fan_in = 9 * in, fan_out = 9 * out.
    assert nn.compute_fans((3, 3, 16, 32)) == (144, 288)
    assert nn.compute_fans((24, 16)) == (24, 16)
    assert nn.compute_fans((24, 16), in_axis=-1, out_axis=-2) == (16, 24)
    w = np.asarray(nn.KaimingNormal()((3, 3, 64, 32), key=jax.random.key(0)))
    assert w.var() == pytest.approx(2 / (9 * 64), rel=0.03)


def test_fans_need_two_dimensions():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        nn.KaimingNormal()((5,), key=jax.random.key(0))
    with pytest.raises(ValueError, match="different axes"):
        nn.compute_fans((3, 4), in_axis=0, out_axis=-2)
    with pytest.raises(ValueError, match="out of range"):
        nn.compute_fans((3, 4), in_axis=2)


def test_orthogonal():
    key = jax.random.key(0)
    tall = np.asarray(nn.Orthogonal()((32, 16), key=key))
    np.testing.assert_allclose(tall.T @ tall, np.eye(16), atol=1e-5)
    wide = np.asarray(nn.Orthogonal(scale=3.0)((16, 32), key=key))
    np.testing.assert_allclose(wide @ wide.T, 9 * np.eye(16), atol=1e-4)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        nn.Orthogonal()((4,), key=key)


@pytest.mark.parametrize("init", RANDOM + DETERMINISTIC, ids=_name)
def test_units(init):
    key = jax.random.key(0)
    plain = init((5, 4), key=key)
    assert isinstance(plain, jax.Array) and not isinstance(plain, u.Quantity)
    with_unit = dataclasses.replace(init, unit=u.mV)((5, 4), key=key)
    assert isinstance(with_unit, u.Quantity)
    assert with_unit.unit == u.mV
    np.testing.assert_array_equal(with_unit.mantissa, plain)
    # A dimensionless unit gives plain numbers.
    dimensionless = dataclasses.replace(init, unit=u.UNITLESS)((5, 4), key=key)
    assert not isinstance(dimensionless, u.Quantity)


def test_unit_argument_is_checked():
    with pytest.raises(TypeError, match="`brainunit` unit"):
        nn.ZeroInit(unit="mV")
    assert repr(nn.KaimingNormal(unit=u.mV)) == 'KaimingNormal(unit=Unit("mV"))'


def test_dtype():
    key = jax.random.key(0)
    assert nn.Normal()((3,), key=key, dtype=jnp.float16).dtype == jnp.float16
    assert nn.ZeroInit()((3,), dtype=jnp.bfloat16).dtype == jnp.bfloat16
    with pytest.raises(TypeError, match="floating dtype"):
        nn.Normal()((3,), key=key, dtype=jnp.int32)


def test_bad_shapes_and_parameters():
    with pytest.raises(ValueError, match="non-negative"):
        nn.ZeroInit()((3, -1))
    with pytest.raises(TypeError, match="tuple of ints"):
        nn.ZeroInit()((3, 1.5))
    with pytest.raises(ValueError, match="non-negative `scale`"):
        nn.Normal(scale=-1.0)
    with pytest.raises(ValueError, match="min_val <= max_val"):
        nn.Uniform(2.0, 1.0)
    with pytest.raises(ValueError, match="lower < upper"):
        nn.TruncatedNormal(lower=1.0, upper=1.0)
    with pytest.raises(ValueError, match="`mode` must be one of"):
        nn.VarianceScaling(mode="fan_sideways")
    with pytest.raises(ValueError, match="`distribution` must be one of"):
        nn.KaimingNormal(distribution="cauchy")
    with pytest.raises(ValueError, match="positive `scale`"):
        nn.XavierNormal(scale=0.0)


def test_repr_is_readable():
    assert repr(nn.Normal(scale=2.0)) == "Normal(scale=2.0)"
    assert repr(nn.ZeroInit()) == "ZeroInit()"
    assert repr(nn.XavierNormal()) == "XavierNormal()"


def test_under_jit_equals_eager():
    init = nn.XavierNormal(unit=u.mV)
    key = jax.random.key(7)
    with jax.checking_leaks():
        jitted = eqx.filter_jit(lambda k: init((4, 3), key=k))(key)
    eager = init((4, 3), key=key)
    assert jitted.unit == u.mV
    np.testing.assert_array_equal(jitted.mantissa, eager.mantissa)


@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
    index=st.integers(0, len(RANDOM + DETERMINISTIC) - 1),
    seed=st.integers(0, 2**31 - 1),
)
def test_shape_dtype_and_determinism_over_shapes(shape, index, seed):
    init = (RANDOM + DETERMINISTIC)[index]
    key = jax.random.key(seed)
    if isinstance(init, FAN_BASED) and len(shape) < 2:
        with pytest.raises(ValueError):
            init(shape, key=key)
        return
    out = init(shape, key=key)
    assert out.shape == shape
    assert out.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(out)))
    np.testing.assert_array_equal(out, init(shape, key=key))
