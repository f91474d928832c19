"""The checkpoint format: tensor names, how each leaf is stored, and the metadata.

Shared by [`eqx_collective.save_states`][] (one safetensors file) and
[`eqx_collective.save_sharded`][] (an orbax directory). Everything read back from a file
goes through `BadFile` checks here: names are decoded and re-encoded to the same text,
dtypes come from fixed tables, units are rebuilt from numbers and strings, and nothing
is evaluated.
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

from ._paths import iter_value_leaves, Path, path_repr
from ._state import is_shared, State


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
    `TypeError` naming the first entry that cannot be a path entry (a tuple, float,
    bool or `None` dict key, ...)."""
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
    """The name of the tensor of the leaf at `path`: the dotted path
    (`'layers.0.weight.bias'`) when every entry is an ASCII identifier or a
    non-negative index, else the JSON list of the path (`'["a.b",-1]'`). The two forms
    never collide (a dotted name never starts with `[`), and each path has one name."""
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
            raise BadFile(f"the tensor name {name!r} is not a valid path") from None
        expect(is_json_path(path), f"the tensor name {name!r} is not a valid path")
        path = tuple(path)
        expect(tensor_name(path) == name, f"the tensor name {name!r} is not canonical")
        return path
    # a dotted name of simple entries is canonical by construction
    path = tuple(map(_dotted_entry, name.split(".")))
    if None in path or name == _RESERVED:
        raise BadFile(f"the tensor name {name!r} is not canonical")
    return cast(Path, path)  # (no `None` in it)


def is_json_path(x: Any) -> bool:
    """Whether parsed JSON `x` is a path: a list of strings and integers."""
    return type(x) is list and all(type(p) is str or type(p) is int for p in x)


# ---------------------------------------------------------------------------- dtypes

# dtypes that safetensors stores natively *and* its NumPy reader reads back
_NATIVE = {
    np.dtype(d).name: np.dtype(d)
    for d in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        ml_dtypes.bfloat16,
    )
}
# one-byte dtypes of `ml_dtypes` stored as a `uint8` view (safetensors has codes for
# some float8s, but its NumPy reader cannot read them back)
_BYTE_VIEWS = {
    np.dtype(getattr(ml_dtypes, n)).name: np.dtype(getattr(ml_dtypes, n))
    for n in (
        "float8_e3m4",
        "float8_e4m3",
        "float8_e4m3b11fnuz",
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
        "float4_e2m1fn",
        "float6_e2m3fn",
        "float6_e3m2fn",
        "int2",
        "int4",
        "uint2",
        "uint4",
    )
    if hasattr(ml_dtypes, n)
}
_COMPLEX128 = np.dtype("complex128")  # stored as float64 with a trailing axis of 2
_KEY_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
KNOWN_DTYPES = sorted([*_NATIVE, *_BYTE_VIEWS, "complex128", "key"])
_KNOWN = frozenset(KNOWN_DTYPES)
_PYTHON_SCALARS = {"bool": bool, "int": int, "float": float, "complex": complex}


def storage_dtype(entry: dict) -> np.dtype:
    """The dtype the tensor of `entry` is stored with."""
    dtype = entry["dtype"]
    if dtype == "key":
        return np.dtype("uint32")
    if dtype == "complex128":
        return np.dtype("float64")
    if dtype in _BYTE_VIEWS:
        return np.dtype("uint8")
    return _NATIVE[dtype]


# ---------------------------------------------------------------------------- leaves


def to_stored(path: Path, leaf: Any, *, host: bool = True) -> tuple[Any, dict]:
    """One leaf as the array to store and its metadata entry (without its name). With
    `host=False` (orbax), JAX arrays stay where they are, in their own dtype."""
    entry: dict[str, Any] = {}
    if type(leaf) is u.Quantity or isinstance(leaf, u.Quantity):
        entry["unit"] = _unit_record(leaf.unit)
        leaf = leaf.mantissa
    if type(leaf) in _PYTHON_NAMES:
        entry["python"] = _PYTHON_NAMES[type(leaf)]
    elif isinstance(leaf, jax.core.Tracer):
        raise ValueError(
            f"`save_states` got a traced value at {path_repr(path)}: it writes concrete "
            f"arrays to disk, so call it outside `jax.jit` / `eqx.filter_jit`."
        )
    dtype = getattr(leaf, "dtype", None)
    rule = _RULES.get(dtype) if dtype is not None else None
    if rule is None:
        if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
            return _key_to_stored(path, leaf, entry, host)
        rule = _rule(
            path, np.dtype(dtype) if dtype is not None else np.asarray(leaf).dtype
        )
    name, view = rule
    entry["dtype"] = name
    if not host:  # orbax stores every dtype as it is
        return (leaf if isinstance(leaf, jax.Array) else np.asarray(leaf)), entry
    array = _contiguous(np.asarray(leaf))
    if view is None:
        return array, entry
    if view == "complex":
        return array[..., None].view(np.float64), entry
    return array.view(view), entry


_PYTHON_NAMES = {bool: "bool", int: "int", float: "float", complex: "complex"}
# dtype -> (its name, `None` (stored as is) or the dtype of the stored view); cached
_RULES: dict[Any, tuple[str, Any]] = {}


def _rule(path: Path, dtype: np.dtype) -> tuple[str, Any]:
    name = dtype.name
    if name in _NATIVE and dtype == _NATIVE[name]:
        rule = (name, None)
    elif name in _BYTE_VIEWS and dtype == _BYTE_VIEWS[name]:
        rule = (name, np.dtype(np.uint8))
    elif dtype == _COMPLEX128:
        rule = (name, "complex")
    else:
        raise ValueError(
            f"`save_states` cannot save the leaf at {path_repr(path)}: its dtype "
            f"{dtype} is not one of {KNOWN_DTYPES}. Store numeric arrays in states."
        )
    _RULES[dtype] = rule
    return rule


def _key_to_stored(path: Path, leaf: Any, entry: dict, host: bool):
    impl = str(jax.random.key_impl(leaf))
    if impl not in _KEY_IMPLS:
        raise ValueError(
            f"`save_states` cannot save the PRNG key at {path_repr(path)}: its "
            f"implementation {impl!r} is not one of {list(_KEY_IMPLS)}."
        )
    entry.update(dtype="key", key_impl=impl)
    data = jax.random.key_data(leaf)
    return (np.asarray(data) if host else data), entry


def _contiguous(array: np.ndarray) -> np.ndarray:
    """`array` in C order (unlike `np.ascontiguousarray`, keeps 0-d arrays 0-d)."""
    return array if array.flags.c_contiguous else array.copy(order="C")


def from_stored(array: Any, entry: dict) -> Any:
    """The array that `to_stored` stored as `array` (already checked against
    `storage_dtype(entry)`): a NumPy array, or a JAX array of typed PRNG keys."""
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
        return _contiguous(array).view(_COMPLEX128)[..., 0]
    if dtype in _BYTE_VIEWS and isinstance(array, np.ndarray):
        return array.view(_BYTE_VIEWS[dtype])
    return array


def finish_leaf(value: Any, entry: dict) -> Any:
    """The leaf itself: `value` (an array) made a Python scalar or a `Quantity` if the
    saved leaf was one."""
    if "python" in entry:
        expect(np.ndim(value) == 0, f"the Python scalar {entry['name']!r} is not 0-d")
        value = _PYTHON_SCALARS[entry["python"]](np.asarray(value).item())
    if "unit" in entry:
        value = u.Quantity(value, unit=parse_unit(entry["unit"]))
    return value


def dtype_name(dtype: np.dtype) -> str:
    """`dtype.name`, cached (NumPy computes it anew each time)."""
    name = _NAMES.get(dtype)
    if name is None:
        name = _NAMES[dtype] = dtype.name
    return name


_NAMES: dict[np.dtype, str] = {}


# ----------------------------------------------------------------------------- units


def _unit_record(unit: u.Unit) -> dict:
    parts = unit._display_parts  # no public accessor; needed to rebuild the name
    return {
        "repr": str(unit),
        "dim": [float(x) for x in np.asarray(unit.dim._dims)],
        "scale": unit.scale,
        "base": float(unit.base),
        "factor": float(unit.factor),
        "name": unit.name,
        "dispname": unit.dispname,
        "is_fullname": bool(unit.is_fullname),
        "display_parts": None
        if parts is None
        else [[str(n), str(d), float(e)] for n, d, e in parts],
    }


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_unit_record(record: Any) -> None:
    expect(isinstance(record, dict), "a unit record is not a JSON object")
    what = f"the unit record {record.get('repr')!r}"
    dim = record.get("dim")
    expect(
        isinstance(dim, list) and len(dim) == 7 and all(map(_is_number, dim)),
        f"{what} has no valid 'dim' (7 numbers)",
    )
    for field in ("scale", "base", "factor"):
        expect(_is_number(record.get(field)), f"{what} has no valid {field!r}")
    for field in ("name", "dispname"):
        expect(isinstance(record.get(field), str), f"{what} has no valid {field!r}")
    expect(isinstance(record.get("is_fullname"), bool), f"{what} has no 'is_fullname'")
    parts = record.get("display_parts")
    expect(
        parts is None
        or isinstance(parts, list)
        and all(
            isinstance(p, list)
            and len(p) == 3
            and isinstance(p[0], str)
            and isinstance(p[1], str)
            and _is_number(p[2])
            for p in parts
        ),
        f"{what} has invalid 'display_parts'",
    )


def parse_unit(record: dict) -> u.Unit:
    """Rebuilds a `brainunit.Unit` from its (checked) metadata record."""

    def number(x):
        return int(x) if float(x).is_integer() else float(x)

    parts = record["display_parts"]
    return u.Unit(
        dim=u.get_or_create_dimension([float(x) for x in record["dim"]]),
        scale=number(record["scale"]),
        base=float(record["base"]),
        factor=float(record["factor"]),
        name=record["name"],
        dispname=record["dispname"],
        is_fullname=record["is_fullname"],
        display_parts=None
        if parts is None
        else [(n, d, number(e)) for n, d, e in parts],
    )


# -------------------------------------------------------------------------- metadata


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
        leaves = []
        value = object.__getattribute__(state, "__dict__")["value"]
        for leaf_path, leaf in iter_value_leaves(path, value):
            try:
                name = tensor_name(normal_path(leaf_path))
            except TypeError as e:
                raise ValueError(
                    f"`save_states` cannot save the leaf at {leaf_path!r}: its path "
                    f"entry {e.args[0]!r} ({type(e.args[0]).__name__}) cannot be "
                    f"written as a path, which is made of `str` keys and `int` "
                    f"indices only, so the file could not be loaded back. Use `str` "
                    f"or `int` dict keys."
                ) from None
            if name in arrays:
                raise ValueError(
                    f"`save_states` cannot save the leaf at {leaf_path!r}: another "
                    f"leaf has the same path. Give the leaves distinct paths."
                )
            arrays[name], entry = to_stored(leaf_path, leaf, host=host)
            leaves.append({"name": name, **entry})
        records.append(_state_record(path, state, leaves))
    metadata = {"format": FORMAT, "version": VERSION, "states": records}
    return Saved(metadata, arrays)


def _state_record(path: Path, state: State, leaves: list[dict]) -> dict:
    fields = object.__getattribute__(state, "__dict__")  # (`eqx.Module`'s is slow)
    return {
        "path": list(normal_path(path)),
        "type": type(state).__name__,
        "tag": fields["tag"],
        "shared": bool(fields["shared"] or is_shared(state)),
        "ensemble_shape": list(fields["ensemble_shape"]),
        "leaves": leaves,
    }


def dumps(metadata: dict) -> str:
    return json.dumps(metadata, allow_nan=False, separators=(",", ":"))


_STATE_FIELDS = {"path", "type", "tag", "shared", "ensemble_shape", "leaves"}
_LEAF_FIELDS = {"name", "dtype", "unit", "python", "key_impl"}


def loads(text: Any) -> dict:
    """Parses and checks the metadata text of a checkpoint; `BadFile` if anything is
    off. Returns the metadata, whose `'states'` records are checked."""
    expect(isinstance(text, str), f"it has no {METADATA_KEY!r} metadata")
    try:
        metadata = json.loads(text)
    except (ValueError, RecursionError) as e:  # (a hostile text may nest deeply)
        raise BadFile(f"its metadata is not valid JSON ({e})") from None
    return check_metadata(metadata)


def check_metadata(metadata: Any) -> dict:
    """Checks parsed metadata (see `loads`)."""
    expect(isinstance(metadata, dict), "its metadata is not a JSON object")
    expect(
        metadata.get("format") == FORMAT,
        f"its metadata's format is {metadata.get('format')!r}, not {FORMAT!r}",
    )
    version = metadata.get("version")
    expect(type(version) is int, "its metadata has no format version")
    expect(
        version <= VERSION,
        f"it was written in format version {version}, but this version of "
        f"`eqx_collective` reads version {VERSION}; upgrade `eqx_collective` to "
        f"load it",
    )
    expect(
        version == VERSION,
        f"it was written in format version {version}, which this version of "
        f"`eqx_collective` no longer reads (it reads version {VERSION})",
    )
    records = metadata.get("states")
    expect(isinstance(records, list), "its metadata has no 'states' list")
    names = set()
    for record in records:
        _check_state_record(record)
        for entry in record["leaves"]:
            if entry["name"] in names:
                raise BadFile(f"the tensor {entry['name']!r} is listed twice")
            names.add(entry["name"])
    return metadata


def _check_state_record(r: Any) -> None:
    if not (
        type(r) is dict
        and r.keys() == _STATE_FIELDS
        and is_json_path(r["path"])
        and isinstance(r["type"], str)
        and (r["tag"] is None or isinstance(r["tag"], str))
        and isinstance(r["shared"], bool)
        and isinstance(r["ensemble_shape"], list)
        and (
            not r["ensemble_shape"]
            or all(type(n) is int and n > 0 for n in r["ensemble_shape"])
        )
        and isinstance(r["leaves"], list)
    ):
        raise BadFile(f"its metadata has an invalid state record {str(r)[:200]}")
    path = tuple(r["path"])
    n = len(path)
    for e in r["leaves"]:  # (messages built only on failure: this is the hot loop)
        if not (type(e) is dict and isinstance(e.get("name"), str)):
            raise BadFile(
                f"the state {path_repr(path)} has an invalid leaf entry {str(e)[:200]}"
            )
        leaf_path = path_of_name(e["name"])
        if leaf_path[:n] != path:
            raise BadFile(
                f"the tensor {e['name']!r} is not below its state {path_repr(path)}"
            )
        if len(e) != 2 or e.get("dtype") not in _PLAIN:
            _check_leaf_entry(e)
        e["path"] = leaf_path  # checked: kept for the reader


_PLAIN = frozenset(_NATIVE) | frozenset(_BYTE_VIEWS) | {"complex128"}


def _check_leaf_entry(e: dict) -> None:
    """The checks of a leaf entry other than `{"name", "dtype"}` of an array."""
    name = e["name"]
    expect(
        set(e) <= _LEAF_FIELDS,
        f"the tensor {name!r} has unknown fields {sorted(set(e) - _LEAF_FIELDS)}",
    )
    expect(
        e.get("dtype") in _KNOWN,
        f"the tensor {name!r} has the unknown dtype {e.get('dtype')!r}",
    )
    expect(
        (e["dtype"] == "key") == ("key_impl" in e)
        and e.get("key_impl", _KEY_IMPLS[0]) in _KEY_IMPLS,
        f"the tensor {name!r} has an invalid 'key_impl'",
    )
    expect(
        e.get("python", "int") in _PYTHON_SCALARS,
        f"the tensor {name!r} has an invalid 'python' field",
    )
    if "unit" in e:
        _check_unit_record(e["unit"])
