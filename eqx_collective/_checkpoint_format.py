"""The checkpoint format: tensor names, how each leaf is stored, units, and the metadata
schema.

Shared by [`eqx_collective.save_states`][] (one safetensors file) and
[`eqx_collective.save_sharded`][] (an orbax directory): both name each tensor by
`tensor_name` and describe it by the same metadata. What is read back goes through
`BadFile` checks: safetensors checks the file, the metadata is checked against one
declarative schema (`SCHEMA`), names are decoded and re-encoded to the same text, and
units are rebuilt from numbers and strings through brainunit's public constructors.
Nothing is evaluated.
"""

import functools
import json
import math
import re
from typing import Any, cast, NamedTuple

import brainunit as u
import jax
import jax.core
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from ._fields import fields
from ._paths import flatten_value, is_concrete_array, Path, path_repr
from ._state import NonBatchState, State


FORMAT = "eqx_collective.states"
VERSION = 2
METADATA_KEY = "eqx_collective"


class BadFile(Exception):
    """A problem with a file's content; the caller turns it into a `ValueError` that
    names the file."""


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise BadFile(what)


# ----------------------------------------------------------------------------- names

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INDEX = re.compile(r"0|[1-9][0-9]*")
_RESERVED = "__metadata__"  # safetensors' own header entry


def normal_path(path: Path) -> Path:
    """`path` with `str`/`int` subclasses (`StrEnum`, `IntEnum` keys) made plain, or a
    `TypeError` naming the first entry that cannot be a path entry."""
    if all(type(p) is str or type(p) is int for p in path):
        return path
    out = []
    for p in path:
        if isinstance(p, str):
            out.append(str.__str__(p))
        elif isinstance(p, int) and not isinstance(p, bool):
            out.append(int(p))
        else:
            raise TypeError(p)
    return tuple(out)


def tensor_name(path: Path) -> str:
    """The one name of the tensor of the leaf at `path`, in both file kinds: the dotted
    path (`'layers.0.weight.bias'`) when every entry is an ASCII identifier or a
    non-negative index, else the JSON list of the path (`'["a.b",-1]'`). The two forms
    never collide (a dotted name never starts with `[`)."""
    simple = all(_is_simple(p) if isinstance(p, str) else p >= 0 for p in path)
    name = ".".join(map(str, path))
    if simple and path and name != _RESERVED:
        return name
    return json.dumps(list(path), separators=(",", ":"))


@functools.lru_cache(maxsize=4096)  # the same few entries recur in every path
def _is_simple(entry: str) -> bool:
    return _IDENTIFIER.fullmatch(entry) is not None


@functools.lru_cache(maxsize=4096)
def _dotted_entry(part: str) -> str | int | None:
    """The path entry of one part of a dotted name, or `None` if it is not canonical."""
    if _IDENTIFIER.fullmatch(part):
        return part
    return int(part) if _INDEX.fullmatch(part) else None


def path_of_name(name: str) -> Path:
    """The path a tensor name encodes; `BadFile` unless `name` is the one name of it."""
    if name.startswith("["):
        try:
            path = json.loads(name)
        except (ValueError, RecursionError):
            path = None
        expect(_is_path(path), f"the tensor name {name!r} is not a valid path")
        path = tuple(cast(list, path))
        expect(tensor_name(path) == name, f"the tensor name {name!r} is not canonical")
        return path
    path = tuple(map(_dotted_entry, name.split(".")))  # canonical by construction
    if None in path or name == _RESERVED:
        raise BadFile(f"the tensor name {name!r} is not canonical")
    return cast(Path, path)


def _is_path(x: Any) -> bool:
    """Whether parsed JSON `x` is a path: a list of strings and integers."""
    return type(x) is list and all(type(p) is str or type(p) is int for p in x)


# ---------------------------------------------------------------------------- dtypes

# What each dtype is stored as, when not as itself: safetensors stores `bool`, the
# (unsigned) integers, `float16/32/64`, `bfloat16` and `complex64` natively. The other
# one-byte `ml_dtypes` go as a `uint8` view (safetensors has codes for some float8s,
# but its NumPy reader cannot read them), `complex128` as `float64` with a trailing
# axis of 2, typed PRNG keys as their `uint32` key data.
_NATIVE = {
    np.dtype(d).name: np.dtype(d)
    for d in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16")
    + ("uint32", "uint64", "float16", "float32", "float64", "complex64")
    + (ml_dtypes.bfloat16,)
}
_NATIVE_NAMES = {d: n for n, d in _NATIVE.items()}
_BYTE_VIEWS = {
    n: np.dtype(getattr(ml_dtypes, n))
    for n in ("float8_e3m4", "float8_e4m3", "float8_e4m3b11fnuz", "float8_e4m3fn")
    + ("float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu")
    + ("float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn", "int2", "int4", "uint2")
    + ("uint4",)
    if hasattr(ml_dtypes, n)
}
_STORED_AS = {"complex128": np.dtype("float64"), "key": np.dtype("uint32")}
_STORED_AS.update(dict.fromkeys(_BYTE_VIEWS, np.dtype("uint8")))
_STORED_AS.update(_NATIVE)
KNOWN_DTYPES = sorted(_STORED_AS)
_KEY_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
_PYTHON = {bool: "bool", int: "int", float: "float", complex: "complex"}
_FROM_PYTHON = {v: k for k, v in _PYTHON.items()}


def storage_dtype(entry: dict) -> np.dtype:
    """The dtype the tensor of `entry` is stored with."""
    return _STORED_AS[entry["dtype"]]


def to_stored(
    path: Path, leaf: Any, *, host: bool = True, name: str | None = None
) -> tuple[Any, dict]:
    """One leaf as the array to store and its metadata entry (with its tensor `name`
    first, if given). With `host=False` (orbax), JAX arrays stay where they are, in
    their own dtype."""
    entry: dict[str, Any] = {} if name is None else {"name": name}
    if host and is_concrete_array(leaf):  # the common case: a native dtype
        dtype = _NATIVE_NAMES.get(leaf.dtype)
        if dtype is not None:
            array = np.asarray(leaf)
            if array.flags.c_contiguous:
                entry["dtype"] = dtype
                return array, entry
    if isinstance(leaf, u.Quantity):
        entry["unit"] = unit_record(leaf.unit)
        leaf = leaf.mantissa
    if type(leaf) in _PYTHON:
        entry["python"] = _PYTHON[type(leaf)]
    elif isinstance(leaf, jax.core.Tracer):
        raise ValueError(
            f"`save_states` got a traced value at {path_repr(path)}: it writes concrete "
            f"arrays to disk, so call it outside `jax.jit` / `eqx.filter_jit`."
        )
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and _is_key(dtype):
        impl = str(jax.random.key_impl(leaf))
        if impl not in _KEY_IMPLS:
            raise ValueError(
                f"`save_states` cannot save the PRNG key at {path_repr(path)}: its "
                f"implementation {impl!r} is not one of {list(_KEY_IMPLS)}."
            )
        entry.update(dtype="key", key_impl=impl)
        data = jax.random.key_data(leaf)
        return (np.asarray(data) if host else data), entry
    np_dtype = np.dtype(dtype) if dtype is not None else np.asarray(leaf).dtype
    name = dtype_name(np_dtype)
    if name not in _STORED_AS:
        raise ValueError(
            f"`save_states` cannot save the leaf at {path_repr(path)}: its dtype "
            f"{np_dtype} is not one of {KNOWN_DTYPES}. Store numeric arrays in states."
        )
    entry["dtype"] = name
    if name in _NATIVE and np_dtype != _NATIVE[name]:  # (another byte order)
        leaf = np.asarray(leaf, _NATIVE[name])
    if not host:  # orbax stores every dtype as it is
        return (leaf if isinstance(leaf, jax.Array) else np.asarray(leaf)), entry
    array = np.asarray(leaf)
    if not array.flags.c_contiguous:  # (`np.ascontiguousarray` makes 0-d arrays 1-d)
        array = array.copy(order="C")
    if name == "complex128":
        return array[..., None].view(np.float64), entry
    return (array if name in _NATIVE else array.view(_STORED_AS[name])), entry


@functools.lru_cache(maxsize=256)
def _is_key(dtype: Any) -> bool:
    return bool(jnp.issubdtype(dtype, jax.dtypes.prng_key))  # (slow: once per dtype)


@functools.lru_cache(maxsize=256)
def dtype_name(dtype: np.dtype) -> str:
    return dtype.name  # (NumPy computes it anew each time)


def from_stored(array: Any, entry: dict) -> Any:
    """The array that `to_stored` stored as `array` (of `storage_dtype(entry)`): a
    NumPy array, or a JAX array of typed PRNG keys."""
    dtype = entry["dtype"]
    if dtype == "key":
        impl = entry["key_impl"]
        trailing = jax.random.key_data(jax.random.key(0, impl=impl)).shape
        expect(
            array.shape[array.ndim - len(trailing) :] == trailing,
            f"the tensor {entry['name']!r} has the shape {array.shape}, which is not "
            f"that of {impl} key data (..., {', '.join(map(str, trailing))})",
        )
        return jax.random.wrap_key_data(array, impl=impl)
    if dtype == "complex128":
        expect(
            array.ndim >= 1 and array.shape[-1] == 2,
            f"the tensor {entry['name']!r} (complex128) has no trailing axis of 2",
        )
        return np.ascontiguousarray(array).view(np.complex128)[..., 0]
    if dtype in _BYTE_VIEWS and isinstance(array, np.ndarray):
        return array.view(_BYTE_VIEWS[dtype])
    return array


def finish_leaf(value: Any, entry: dict) -> Any:
    """The leaf itself: `value` (an array) made a Python scalar or a `Quantity` if the
    saved leaf was one."""
    if "python" in entry:
        expect(np.ndim(value) == 0, f"the Python scalar {entry['name']!r} is not 0-d")
        value = _FROM_PYTHON[entry["python"]](np.asarray(value).item())
    if "unit" in entry:
        value = u.Quantity(value, unit=parse_unit(entry["unit"]))
    return value


def is_plain(entry: dict) -> bool:
    """Whether the leaf of `entry` is stored as itself: an array of a native dtype
    (perhaps the mantissa of a `Quantity`), not a key or a Python scalar."""
    return entry["dtype"] in _NATIVE and "python" not in entry


# ----------------------------------------------------------------------------- units

_SI = ("m", "kg", "s", "A", "K", "mol", "cd")  # `brainunit.Dimension`'s base names


def unit_record(unit: u.Unit) -> dict:
    """What a checkpoint records of a `brainunit.Unit`, read through its public
    attributes: its text, the exponents of its dimension, its scale and factor."""
    return {
        "repr": str(unit),
        "dim": [float(unit.dim.get_dimension(n)) for n in _SI],
        "scale": unit.scale,
        "factor": float(unit.factor),
    }


def parse_unit(record: dict) -> u.Unit:
    """Rebuilds a unit from its (checked) record through brainunit's public
    constructors: brainunit's own unit of that text (`u.Unit(text)`, which parses
    names and never evaluates) when it is the recorded unit, else a unit built from the
    numbers (`u.Unit(dim, scale=, factor=)`) and displayed as the text."""
    dim = u.get_or_create_dimension([float(x) for x in record["dim"]])
    text, scale, factor = record["repr"], record["scale"], record["factor"]
    scale = int(scale) if float(scale).is_integer() else float(scale)
    try:
        parsed = u.Unit(text) if len(text) <= 200 else None  # (bounded work)
    except (ValueError, TypeError, KeyError, RecursionError):
        parsed = None
    if (
        parsed is not None
        and parsed.dim == dim
        and (parsed.scale, parsed.factor) == (scale, factor)
        and str(parsed) == text
    ):
        return parsed
    try:
        return u.Unit(dim, scale=scale, factor=factor, name=text, dispname=text)
    except (ValueError, TypeError) as e:
        raise BadFile(f"the unit record {text!r} is not a valid unit ({e})") from None


# -------------------------------------------------------------------- the metadata


def _number(x: Any) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


def _size(x: Any) -> bool:
    return type(x) is int and x >= 0


# The metadata, declared once: a dict is a JSON object with these keys (a key ending
# in `?` may be absent), a list `[s]` a JSON list of `s`, a type an instance of it
# (`bool` is not an `int` here), a frozenset the values allowed, `Each(s)` an object
# whose every value is `s`, a function a check of the value. `check` reads it.
class Each(NamedTuple):
    schema: Any


_UNIT = {
    "repr": str,
    "dim": lambda d: type(d) is list and len(d) == 7 and all(map(_number, d)),
    "scale": _number,
    "factor": lambda x: _number(x) and x > 0,
    # written by earlier versions of this format; read and ignored
    "base?": _number,
    **dict.fromkeys(("name?", "dispname?"), str),
    "is_fullname?": bool,
    "display_parts?": lambda x: x is None or type(x) is list,
}
_LEAF = {
    "name": str,
    "dtype": frozenset(KNOWN_DTYPES),
    "unit?": _UNIT,
    "python?": frozenset(_FROM_PYTHON),
    "key_impl?": frozenset(_KEY_IMPLS),
}
SCHEMA = {
    "format": frozenset([FORMAT]),
    "version": int,
    "states": [
        {
            "path": _is_path,
            "type": str,
            "tag": lambda x: x is None or type(x) is str,
            "shared": bool,
            "ensemble_shape": lambda s: (
                type(s) is list and all(_size(n) and n > 0 for n in s)
            ),
            "leaves": [_LEAF],
        }
    ],
}
STORED = Each({"shape": lambda s: type(s) is list and all(map(_size, s)), "dtype": str})


def check(value: Any, schema: Any, where: tuple = ()) -> None:
    """`BadFile` naming the first place (`states[0].shared`) where `value` (parsed
    JSON) breaks `schema`. `where` is that place as parts (a key, an `int` index, a
    1-tuple: a key of an `Each`), made text only for the message."""
    kind = type(schema)
    if kind is dict:
        required, allowed, items = _fields_of(schema)
        if type(value) is not dict:
            _fail(where, "is not a JSON object")
        if not value.keys() <= allowed:
            _fail(where, f"has unknown fields {sorted(value.keys() - allowed)}")
        if not required <= value.keys():
            _fail(where, f"has no {sorted(required - value.keys())[0]!r}")
        for key, sub in items:
            if key in value:
                x, kind = value[key], type(sub)
                if (
                    kind is type
                    and type(x) is sub
                    or (kind is frozenset and type(x) is str and x in sub)
                ):
                    continue  # (the common leaves, checked here: fewer calls)
                check(x, sub, (*where, key))
    elif kind is list:
        if type(value) is not list:
            _fail(where, "is not a list")
        for i, item in enumerate(value):
            check(item, schema[0], (*where, i))
    elif kind is Each:
        if type(value) is not dict:
            _fail(where, "is not a JSON object")
        for key, item in value.items():
            check(item, schema.schema, (*where, (key,)))
    elif kind is frozenset:
        if type(value) is not str or value not in schema:
            _fail(where, f"is {value!r}, which is not one of {sorted(schema)}")
    elif kind is type:
        if type(value) is not schema:
            _fail(where, f"is not a {schema.__name__}")
    elif not schema(value):
        _fail(where, f"is not valid ({str(value)[:100]})")


def _fields_of(schema: dict) -> tuple:
    """`(required keys, allowed keys, (key, sub-schema) pairs)` of an object schema
    (one of this module's constants, so its `id` is stable)."""
    got = _FIELDS.get(id(schema))
    if got is None:
        subs = {k.rstrip("?"): sub for k, sub in schema.items()}
        required = frozenset(k for k in schema if k[-1] != "?")
        got = _FIELDS[id(schema)] = (required, frozenset(subs), tuple(subs.items()))
    return got


_FIELDS: dict[int, tuple] = {}


def _fail(where: tuple, problem: str) -> None:
    parts = (
        f"[{p}]" if type(p) is int else f"[{p[0]!r}]" if type(p) is tuple else f".{p}"
        for p in where
    )
    raise BadFile(
        f"its metadata is invalid: {''.join(parts).removeprefix('.') or 'it'} {problem}"
    )


Leaves = dict[Path, tuple[dict, dict]]  # leaf path: (leaf entry, state record)


def loads(text: Any) -> Leaves:
    """Parses and checks the metadata text of a checkpoint: the `(leaf entry, state
    record)` of each tensor by leaf path, in order, each entry with its leaf's `path`
    added; `BadFile` if anything is off."""
    expect(isinstance(text, str), f"it has no {METADATA_KEY!r} metadata")
    try:
        metadata = json.loads(text)
    except (ValueError, RecursionError) as e:  # (a hostile text may nest deeply)
        raise BadFile(f"its metadata is not valid JSON ({e})") from None
    return entries(metadata)


def entries(metadata: Any) -> Leaves:
    """`loads` for parsed metadata."""
    version = metadata.get("version") if type(metadata) is dict else None
    if type(version) is int and version != VERSION:
        expect(
            version < VERSION,
            f"it was written in format version {version}, but this version of "
            f"`eqx_collective` reads version {VERSION}; upgrade `eqx_collective`",
        )
        raise BadFile(
            f"it was written in format version {version}, which this version of "
            f"`eqx_collective` no longer reads (it reads version {VERSION})"
        )
    check(metadata, SCHEMA)
    out: Leaves = {}
    for record in metadata["states"]:
        path = tuple(record["path"])
        for e in record["leaves"]:
            e["path"] = leaf_path = path_of_name(e["name"])
            if (
                leaf_path in out  # (one name per path: the name is listed twice)
                or leaf_path[: len(path)] != path
                or (e["dtype"] == "key") != ("key_impl" in e)
            ):  # (the messages are built only when needed)
                _refuse_leaf(e, out, path)
            out[leaf_path] = (e, record)
    return out


def _refuse_leaf(e: dict, out: Leaves, path: Path) -> None:
    expect(e["path"] not in out, f"the tensor {e['name']!r} is listed twice")
    expect(
        e["path"][: len(path)] == path,
        f"the tensor {e['name']!r} is not below its state {path_repr(path)}",
    )
    raise BadFile(
        f"the tensor {e['name']!r} has a 'key_impl' only if its dtype is 'key'"
    )


# --------------------------------------------------------------------------- saving


class Saved(NamedTuple):
    """What a checkpoint holds, in memory: the metadata (JSON-able) and one stored
    array per tensor name."""

    metadata: dict
    arrays: dict[str, Any]


def collect(found: list[tuple[Path, State]], *, host: bool = True) -> Saved:
    """The stored arrays and metadata of the states `found` (`(path, state)` pairs)."""
    arrays: dict[str, Any] = {}
    records = []
    for path, state in found:
        path, leaves, d = _writable(path, path), [], fields(state)
        values, _, subpaths = flatten_value(d["value"])
        for sub, name, leaf in zip(
            subpaths, _names(path, subpaths), values, strict=True
        ):
            if isinstance(leaf, u.Quantity) and leaf.mantissa is None:
                continue  # (what `eqx.partition` leaves where it removed one)
            if name in arrays:
                raise ValueError(
                    f"`save_states` cannot save the leaf at {path + sub!r}: another "
                    f"leaf has the same path. Give the leaves distinct paths."
                )
            arrays[name], entry = to_stored(path + sub, leaf, host=host, name=name)
            leaves.append(entry)
        records.append(
            {
                "path": list(path),
                "type": type(state).__name__,
                "tag": d.get("tag"),
                "shared": bool(  # (`issubclass`: Equinox's `isinstance` is slow)
                    d.get("shared") or issubclass(type(state), NonBatchState)
                ),
                "ensemble_shape": list(d["ensemble_shape"]),
                "leaves": leaves,
            }
        )
    metadata = {"format": FORMAT, "version": VERSION, "states": records}
    return Saved(metadata, arrays)


def _writable(path: Path, where: Path) -> Path:
    """`normal_path(path)`, or a `ValueError` naming the leaf at `where`."""
    try:
        return normal_path(path)
    except TypeError as e:
        raise ValueError(
            f"`save_states` cannot save the leaf at {where!r}: its path entry "
            f"{e.args[0]!r} ({type(e.args[0]).__name__}) cannot be written as a path, "
            f"which is made of `str` keys and `int` indices only, so the file could "
            f"not be loaded back. Use `str` or `int` dict keys."
        ) from None


def _names(path: Path, subpaths: tuple[Path, ...]) -> list[str]:
    """`tensor_name(path + sub)` for each of `subpaths` (`path` normal), the dotted
    ones joined from texts made once per state path and once per value structure."""
    # (by identity: `flatten_value` caches one `subpaths` per structure, and equal
    # tuples may differ in their keys' types: `(0,) == (False,)`)
    cached = _SUFFIXES.get(id(subpaths))
    if cached is None or cached[0] is not subpaths:
        texts = [_prefix(_writable(sub, path + sub)) for sub in subpaths]
        suffixes = [None if t is None else f".{t}" if t else "" for t in texts]
        cached = _SUFFIXES[id(subpaths)] = (subpaths, suffixes)
    prefix = _prefix(path) if path else None  # (a root state: `tensor_name`)
    return [
        prefix + s
        if prefix is not None and s is not None and prefix + s != _RESERVED
        else tensor_name(normal_path(path + sub))
        for sub, s in zip(subpaths, cached[1], strict=True)
    ]


@functools.lru_cache(maxsize=2**16)  # (the same states are saved again and again)
def _prefix(path: Path) -> str | None:
    """The dotted text of a normal `path` (only `str` and `int` entries, so that equal
    paths are the same; `""` for `()`), or `None` if it has none."""
    simple = all(_is_simple(p) if isinstance(p, str) else p >= 0 for p in path)
    return ".".join(map(str, path)) if simple else None


_SUFFIXES: dict[int, tuple[tuple[Path, ...], list]] = {}


def dumps(metadata: dict) -> str:
    return json.dumps(metadata, allow_nan=False, separators=(",", ":"))
