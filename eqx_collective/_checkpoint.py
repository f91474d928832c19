"""Persisting states: `save_states` and `load_states` (the format is described in
`save_states`)."""

import json
import math
import os
import tempfile
import zipfile
from collections.abc import Iterator
from typing import Any, BinaryIO

import brainunit as u
import jax
import ml_dtypes
import numpy as np
from jaxtyping import PyTree

from ._assign import assign_state_values, AssignResult
from ._filters import Filter
from ._paths import iter_value_leaves, Path, path_repr, path_str
from ._state import is_shared
from ._views import states as _states


FORMAT = "eqx_collective.states"
VERSION = 1
METADATA_KEY = "__eqx_collective__"

# dtypes that `.npy` stores natively
_NATIVE_DTYPES = {
    np.dtype(name).name: np.dtype(name)
    for name in (
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
        "complex128",
    )
}
# dtypes stored as a view of unsigned integers of the same width
_VIEW_DTYPES = {
    np.dtype(getattr(ml_dtypes, name)).name: np.dtype(getattr(ml_dtypes, name))
    for name in (
        "bfloat16",
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e4m3b11fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
        "int4",
        "uint4",
    )
    if hasattr(ml_dtypes, name)
}
_UINT_OF_WIDTH = {1: np.dtype("uint8"), 2: np.dtype("uint16"), 4: np.dtype("uint32")}
_PYTHON_SCALARS = {"bool": bool, "int": int, "float": float, "complex": complex}

File = str | os.PathLike | BinaryIO


def _file_name(file: File) -> str:
    if isinstance(file, (str, os.PathLike)):
        return repr(os.fspath(file))
    return repr(getattr(file, "name", "<file object>"))


# ---------------------------------------------------------------------------- saving


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


def _to_numpy(path: Path, leaf: Any) -> tuple[np.ndarray, dict]:
    """One leaf as the array to store and its entry in the metadata (without names)."""
    unit = None
    python = None
    if isinstance(leaf, u.Quantity):
        unit = _unit_record(leaf.unit)
        leaf = leaf.mantissa
    if isinstance(leaf, jax.core.Tracer):
        raise ValueError(
            f"`save_states` got a traced value at {path_repr(path)}: it writes concrete "
            f"arrays to disk, so call it outside `jax.jit` / `eqx.filter_jit`."
        )
    if type(leaf) in (bool, int, float, complex):
        python = type(leaf).__name__
    array = np.asarray(leaf)
    dtype = array.dtype
    if dtype.name in _NATIVE_DTYPES and dtype == _NATIVE_DTYPES[dtype.name]:
        stored = array
    elif dtype.name in _VIEW_DTYPES and dtype == _VIEW_DTYPES[dtype.name]:
        stored = array.view(_UINT_OF_WIDTH[dtype.itemsize])
    else:
        raise ValueError(
            f"`save_states` cannot save the leaf at {path_repr(path)}: its dtype "
            f"{dtype} is not one of {sorted(_NATIVE_DTYPES) + sorted(_VIEW_DTYPES)}. "
            f"Store numeric arrays in states."
        )
    entry = {
        "dtype": dtype.name,
        "shape": list(array.shape),
        "unit": unit,
        "python": python,
    }
    return np.asarray(stored, order="C"), entry


def save_states(file: File, model: PyTree, *filters: Filter) -> None:
    """Saves the values of `model`'s states to `file`, in a portable `.npz` format (one
    array per leaf, keyed by dotted leaf-level path, plus JSON metadata: dtypes, units,
    shared states) that [`eqx_collective.load_states`][] reads back.

    The values are saved exactly: every dtype bit for bit (including `bfloat16`),
    `brainunit.Quantity` values in the state's own unit. A stacked ensemble is saved
    like any model (its arrays simply carry the ensemble axis). Writing to a path is
    atomic: the file is written next to the target and moved into place, so a crash
    never leaves a truncated checkpoint behind.

    **File format** (version 1).

    A checkpoint is an uncompressed NumPy `.npz` archive (a zip of `.npy` files), readable
    with `numpy.load(file, allow_pickle=False)` and no other software:

    - one array per leaf of every saved state, named by its dotted *leaf-level* path
        (`'layers.0.weight.bias'`; an array- or `Quantity`-valued state by its state-level
        path). A `brainunit.Quantity` is saved as its mantissa, in the state's own unit.
        Dtypes that `.npy` has no code for (`bfloat16`, the `float8` family, `int4`, ...)
        are saved as a view of unsigned integers of the same width (`bfloat16` as
        `uint16`), the real dtype being recorded in the metadata;
    - one entry `__eqx_collective__`: the metadata, UTF-8 JSON stored as a `uint8` array:

        ```json
        {"format": "eqx_collective.states", "version": 1,
         "states": [{"path": ["layers", 0, "weight"], "type": "ParamState",
                     "tag": null, "shared": false}],
         "entries": [{"name": "layers.0.weight.bias", "path": ["layers", 0, "weight", "bias"],
                      "state": 0, "dtype": "float32", "shape": [16],
                      "unit": null, "python": null}]}
        ```

        `path`s are JSON lists of strings and integers (so dict keys that contain dots or
        look like integers survive); `state` indexes `states`; `shared` is
        [`eqx_collective.is_shared`][] of the state (saved so an ensemble's file records
        which states carry no ensemble axis); `python` is `"bool"`, `"int"`, `"float"` or
        `"complex"` for a leaf that was a Python scalar; `unit` is `null` or a record of a
        `brainunit.Unit`: `{"repr", "dim": [7 exponents of the SI base dimensions], "scale",
        "base", "factor", "name", "dispname", "is_fullname", "display_parts"}`, rebuilt
        from those numbers and strings (nothing is evaluated).

    Loading never unpickles or runs anything from the file: arrays are read with
    `allow_pickle=False`, the metadata with `json`, dtypes from a fixed list of names, and
    units from the record above.

    **Arguments:**

    - `file`: a path (`str` or `os.PathLike`; written as given, no `.npz` is appended)
        or a binary file object open for writing.
    - `model`: the model whose states to save.
    - `*filters`: save only the states these select (see [`eqx_collective.Filter`][]);
        all of them by default.

    **Returns:** `None`.

    **Raises:**

    - `ValueError` if a value is traced (call `save_states` outside `jax.jit`), has a
        dtype the format does not know, or two leaves have the same dotted path.
    - `OSError` (e.g. `FileNotFoundError`) if the file cannot be written.

    !!! Example

        ```python
        ec.save_states("model.npz", model)
        model, unexpected, missing = ec.load_states("model.npz", model)
        ```
    """
    arrays: dict[str, np.ndarray] = {}
    state_records = []
    entries = []
    for i, (path, state) in enumerate(_states(model, *filters).items()):
        state_records.append(
            {
                "path": list(path),
                "type": type(state).__name__,
                "tag": state.tag,
                "shared": bool(is_shared(state)),
            }
        )
        for leaf_path, leaf in iter_value_leaves(path, state.value):
            name = path_str(leaf_path) or "<root>"
            if name in arrays or name == METADATA_KEY:
                raise ValueError(
                    f"`save_states` cannot save the leaf at {leaf_path!r}: its dotted "
                    f"name {name!r} is taken by another leaf (or by the metadata). "
                    f"Rename the dict key or attribute so that dotted paths are "
                    f"unique."
                )
            arrays[name], entry = _to_numpy(leaf_path, leaf)
            entries.append({"name": name, "path": list(leaf_path), "state": i, **entry})
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "states": state_records,
        "entries": entries,
    }
    text = json.dumps(metadata, allow_nan=False, separators=(",", ":"))
    arrays[METADATA_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    if not isinstance(file, (str, os.PathLike)):
        np.savez(file, **arrays)
        return
    target = os.fspath(file)
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"`save_states` cannot write {target!r}: the directory {directory!r} does "
            f"not exist. Create it first."
        )
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# --------------------------------------------------------------------------- loading


class _BadFile(Exception):
    """A problem with the file's content; turned into a `ValueError` naming it."""


def _expect(cond: bool, what: str):
    if not cond:
        raise _BadFile(what)


def _is_path(x: Any) -> bool:
    return isinstance(x, list) and all(
        isinstance(p, (str, int)) and not isinstance(p, bool) for p in x
    )


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _parse_unit(record: Any) -> u.Unit:
    """Rebuilds a `brainunit.Unit` from its metadata record (numbers and strings)."""
    _expect(isinstance(record, dict), "a unit record is not a JSON object")
    dim = record.get("dim")
    _expect(
        isinstance(dim, list) and len(dim) == 7 and all(map(_is_number, dim)),
        f"the unit record {record.get('repr')!r} has no valid 'dim' (7 numbers)",
    )
    for field in ("scale", "base", "factor"):
        _expect(
            _is_number(record.get(field)),
            f"the unit record {record.get('repr')!r} has no valid {field!r}",
        )
    for field in ("name", "dispname"):
        _expect(
            isinstance(record.get(field), str),
            f"the unit record {record.get('repr')!r} has no valid {field!r}",
        )
    _expect(
        isinstance(record.get("is_fullname"), bool),
        f"the unit record {record.get('repr')!r} has no valid 'is_fullname'",
    )
    parts = record.get("display_parts")
    if parts is not None:
        _expect(
            isinstance(parts, list)
            and all(
                isinstance(p, list)
                and len(p) == 3
                and isinstance(p[0], str)
                and isinstance(p[1], str)
                and _is_number(p[2])
                for p in parts
            ),
            f"the unit record {record.get('repr')!r} has invalid 'display_parts'",
        )
        parts = [
            (n, d, int(e) if float(e).is_integer() else float(e)) for n, d, e in parts
        ]
    scale = record["scale"]
    return u.Unit(
        dim=u.get_or_create_dimension([float(x) for x in dim]),
        scale=int(scale) if float(scale).is_integer() else scale,
        base=float(record["base"]),
        factor=float(record["factor"]),
        name=record["name"],
        dispname=record["dispname"],
        is_fullname=record["is_fullname"],
        display_parts=parts,
    )


def _parse_entries(metadata: Any) -> Iterator[dict]:
    _expect(isinstance(metadata, dict), "the metadata is not a JSON object")
    _expect(
        metadata.get("format") == FORMAT,
        f"the metadata's format is {metadata.get('format')!r}, not {FORMAT!r}",
    )
    version = metadata.get("version")
    _expect(isinstance(version, int), "the metadata has no format version")
    if version > VERSION:
        raise _BadFile(
            f"it was written in format version {version}, but this version of "
            f"`eqx_collective` reads versions up to {VERSION}; upgrade "
            f"`eqx_collective` to load it"
        )
    records = metadata.get("states")
    entries = metadata.get("entries")
    _expect(
        isinstance(records, list) and isinstance(entries, list),
        "the metadata has no 'states' or 'entries' list",
    )
    for r in records:
        _expect(
            isinstance(r, dict)
            and _is_path(r.get("path"))
            and isinstance(r.get("shared"), bool),
            f"the metadata has an invalid state record {r!r}",
        )
    for e in entries:
        _expect(isinstance(e, dict), f"the metadata has an invalid entry {e!r}")
        name = e.get("name")
        _expect(
            isinstance(name, str), f"the metadata has an entry without a name {e!r}"
        )
        _expect(_is_path(e.get("path")), f"the entry {name!r} has an invalid path")
        state = e.get("state")
        _expect(
            isinstance(state, int)
            and not isinstance(state, bool)
            and 0 <= state < len(records),
            f"the entry {name!r} refers to no state",
        )
        dtype = e.get("dtype")
        _expect(
            dtype in _NATIVE_DTYPES or dtype in _VIEW_DTYPES,
            f"the entry {name!r} has the unknown dtype {dtype!r}",
        )
        shape = e.get("shape")
        _expect(
            isinstance(shape, list)
            and all(isinstance(n, int) and not isinstance(n, bool) for n in shape)
            and all(n >= 0 for n in shape),
            f"the entry {name!r} has an invalid shape",
        )
        _expect(
            e.get("python") in (None, *_PYTHON_SCALARS),
            f"the entry {name!r} has an invalid 'python' field",
        )
        yield e


def _read(file: File) -> tuple[dict[Path, Any], dict[Path, bool]]:
    """Reads and validates a checkpoint: `({leaf_path: value}, {state_path: shared})`.
    Raises `_BadFile` if the content is not a valid checkpoint."""
    try:
        npz = np.load(file, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e):
            raise _BadFile(
                "it holds pickled data, which `load_states` refuses to load (it "
                "never unpickles)"
            ) from e
        raise _BadFile(f"it is not a NumPy `.npz` archive ({e})") from e
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise _BadFile(
            f"it is not a readable `.npz` archive; it may be corrupted or truncated "
            f"({e})"
        ) from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise _BadFile("it is a single `.npy` array, not an `.npz` archive")
    with npz:
        members = set(npz.files)
        _expect(
            METADATA_KEY in members,
            f"it has no {METADATA_KEY!r} metadata entry, so it was not written by "
            f"`save_states`",
        )
        try:
            raw = npz[METADATA_KEY]
            _expect(
                raw.dtype == np.uint8 and raw.ndim == 1, "the metadata entry is invalid"
            )
            metadata = json.loads(raw.tobytes().decode("utf-8"))
            entries = list(_parse_entries(metadata))
            values: dict[Path, Any] = {}
            names = {METADATA_KEY}
            for e in entries:
                name = e["name"]
                _expect(name in members, f"the entry {name!r} is missing from it")
                _expect(name not in names, f"the entry {name!r} appears twice")
                names.add(name)
                dtype = _NATIVE_DTYPES.get(e["dtype"]) or _VIEW_DTYPES[e["dtype"]]
                stored_dtype = (
                    dtype
                    if e["dtype"] in _NATIVE_DTYPES
                    else _UINT_OF_WIDTH[dtype.itemsize]
                )
                array = npz[name]
                _expect(
                    array.dtype == stored_dtype and list(array.shape) == e["shape"],
                    f"the entry {name!r} holds {array.dtype}{list(array.shape)} but "
                    f"its metadata says {stored_dtype}{e['shape']}",
                )
                if stored_dtype != dtype:
                    array = array.view(dtype)
                value: Any = array
                if e["python"] is not None:
                    value = _PYTHON_SCALARS[e["python"]](array.item())
                if e["unit"] is not None:
                    value = u.Quantity(array, unit=_parse_unit(e["unit"]))
                values[tuple(e["path"])] = value
            extra = members - names
            _expect(not extra, f"it holds entries not in its metadata: {sorted(extra)}")
        except ValueError as e:
            if "pickle" in str(e).lower():
                raise _BadFile(
                    "it holds a pickled object array, which `load_states` refuses "
                    "to load (it never unpickles)"
                ) from e
            raise _BadFile(f"it is corrupted ({e})") from e
        except (zipfile.BadZipFile, EOFError, OSError, KeyError) as e:
            raise _BadFile(f"it is corrupted or truncated ({e})") from e
    shared = {tuple(r["path"]): r["shared"] for r in metadata["states"]}
    return values, shared


def load_states(file: File, model: PyTree, *, strict: bool = False) -> AssignResult:
    """Loads state values saved by [`eqx_collective.save_states`][] into `model`, with
    the checks of [`eqx_collective.assign_state_values`][] (structure, shape, safe
    dtype casts, units), and reports what did not match.

    The file is read in full and checked before anything is assigned; on any error the
    model is left as it was (as always, the input model is never modified).

    The file format is described in [`eqx_collective.save_states`][]. Loading never
    unpickles or evaluates anything from the file: arrays are read with
    `numpy.load(..., allow_pickle=False)`, the metadata with `json`, dtypes from a
    fixed list of names, and units rebuilt from numbers and strings.

    **Arguments:**

    - `file`: a path (`str` or `os.PathLike`) or a binary file object open for
        reading.
    - `model`: the model to load into; its states define what is expected.
    - `strict`: if `True`, keys in the file that match nothing in the model, or states
        of the model the file does not cover, are an error.

    **Returns:**

    An [`eqx_collective.AssignResult`][] `(model, unexpected, missing)`, as for
    [`eqx_collective.assign_state_values`][]; `unexpected` holds tuple paths.

    **Raises:**

    - `FileNotFoundError` if there is no file at `file`.
    - `ValueError` naming the file and what is wrong: not an `.npz` archive, corrupted
        or truncated, a pickled object inside, metadata missing or invalid, a newer
        format version; a value that fails a check (the file of another model); a
        state saved as shared in an ensemble that is not shared in `model` or the
        other way round; no saved leaf matching the model at all; or, with
        `strict=True`, unexpected or missing keys.

    !!! Example

        ```python
        ec.save_states("rnn.npz", rnn)
        rnn, unexpected, missing = ec.load_states("rnn.npz", rnn)
        assert unexpected == [] and missing == []
        ```
    """
    name = _file_name(file)
    if isinstance(file, (str, os.PathLike)):
        if not os.path.exists(file):
            raise FileNotFoundError(
                f"`load_states` found no checkpoint at {name}. Check the path (no "
                f"`.npz` suffix is added to it)."
            )
        if os.path.isdir(file):
            raise IsADirectoryError(
                f"`load_states` was given the directory {name}; pass the path of the "
                f"`.npz` file written by `save_states`."
            )
    try:
        values, shared = _read(file)
    except _BadFile as e:
        raise ValueError(
            f"`load_states` cannot load {name}: {e}. Pass a file written by "
            f"`eqx_collective.save_states`."
        ) from None

    model_states = _states(model)
    wrong = [
        (path, flag)
        for path, flag in shared.items()
        if path in model_states and is_shared(model_states[path]) != flag
    ]
    if wrong:
        listing = ", ".join(
            f"{path_repr(p)} (saved {'shared' if f else 'batched'})" for p, f in wrong
        )
        raise ValueError(
            f"`load_states` cannot load {name} into this model: these states are "
            f"shared between ensemble members in one and batched in the other: "
            f"{listing}. Load it into a model built the same way (the same "
            f"`state_to_exclude` for `vmap_init_all_states`)."
        )
    try:
        result = assign_state_values(model, values, strict=strict)
    except ValueError as e:
        raise ValueError(
            f"`load_states` cannot load {name} into this model (is it the file of "
            f"another model?):\n{e}"
        ) from None
    if values and model_states and len(result.unexpected) == len(values):
        raise ValueError(
            f"`load_states` cannot load {name} into this model: none of its "
            f"{len(values)} saved leaves matches a state of the model (e.g. "
            f"{path_str(next(iter(values)))!r}), so it is the file of another model. "
            f"Check the file, or assign a subset with `assign_state_values`."
        )
    return result
