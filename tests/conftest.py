import os

import hypothesis
import jax
import pytest


# Four simulated CPU devices for the sharding tests: set before any JAX computation
# (importing eqx_collective starts no backend; `tests/test_init.py` checks it).
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

hypothesis.settings.register_profile(
    "default",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
    print_blob=True,
)
hypothesis.settings.load_profile("default")


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def getkey():
    """A function returning a fresh key on each call."""
    keys = iter(jax.random.split(jax.random.key(1234), 1000))
    return lambda: next(keys)
