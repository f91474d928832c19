"""Argument checks shared by the whole library: `positive_int` and `describe`."""

import operator
from typing import Any

import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np


def describe(value: Any) -> str:
    """A short description of `value` for error messages: `float32[4,3]` for an array,
    `float32[4] with unit mV` for a `brainunit.Quantity`, `key<fry>[2]` for typed PRNG
    keys, `Python int 3` for a Python scalar, else the type and (shortened) repr."""
    if isinstance(value, u.Quantity):
        return f"{describe(value.mantissa)} with unit {value.unit}"
    if type(value) in (bool, int, float, complex):
        return f"Python {type(value).__name__} {value!r}"
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        is_key = jnp.issubdtype(dtype, jax.dtypes.prng_key)
        name = str(dtype) if is_key else np.dtype(dtype).name
        return f"{name}[{','.join(map(str, shape))}]"
    return f"{type(value).__name__} {value!r}"[:80]


def positive_int(value: Any, what: str, where: str) -> int:
    """`value` as a Python `int`, checked to be a positive integer.

    Python integers, NumPy integers (`np.int64(3)`) and anything else with
    `__index__` are accepted; a `bool` is refused (it is not a count).

    **Arguments:**

    - `value`: the value to check.
    - `what`: the argument's name, for the message (`"batch_size"`).
    - `where`: the API that takes it, for the message (`"init_state"`).

    **Returns:** `value` as an `int`.

    **Raises:** `TypeError` if `value` is not an integer (a float, a string, a bool,
    an array); `ValueError` if it is zero or negative. The message names `where` and
    `what`.
    """
    if isinstance(value, (bool, np.bool_)):
        number = None
    else:
        try:
            number = operator.index(value)
        except TypeError:
            number = None
    if number is None:
        raise TypeError(
            f"`{where}` takes a positive integer `{what}`, but got {describe(value)}."
        )
    if number <= 0:
        raise ValueError(
            f"`{where}` takes a positive integer `{what}`, but got {number}."
        )
    return number
