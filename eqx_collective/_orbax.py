"""Sharded checkpoints with orbax: `save_sharded` and `load_sharded`."""

import os
from typing import Any

import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from . import _checkpoint_format as fmt
from ._checkpoint import (
    collect_states,
    finish_load,
    LoadResult,
    match,
    model_leaf,
    Rename,
    renamed,
)
from ._filters import Filter


def _orbax(op: str):
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:
        raise ImportError(
            f"`{op}` writes and reads orbax checkpoints, but `orbax-checkpoint` is not "
            f"installed. Install it with `pip install 'eqx_collective[orbax]'`."
        ) from e
    return ocp


def save_sharded(directory: str | os.PathLike, model: PyTree, *filters: Filter) -> None:
    """Saves the values of `model`'s states to an [orbax](https://orbax.readthedocs.io)
    checkpoint directory, each array written from the devices that hold it: a sharded
    ensemble (see [`eqx_collective.shard_ensemble`][]) is never gathered to one host.
    [`eqx_collective.load_sharded`][] restores it into the shardings of a target model.

    What is saved, and the metadata recorded, are as for
    [`eqx_collective.save_states`][] (the same JSON, in the directory's `metadata`
    item, with the stored shape and dtype of each tensor under `"stored"`); the arrays
    are in the `arrays` item, under the tensor names of `save_states`.
    Needs the `orbax` extra: `pip install 'eqx_collective[orbax]'`.

    **Arguments:**

    - `directory`: the checkpoint directory; replaced if it exists. Its parent
        directory must exist.
    - `model`: the model whose states to save.
    - `*filters`: save only the states these select; all of them by default.

    **Returns:** `None` (the checkpoint is complete when it returns).

    **Raises:** as [`eqx_collective.save_states`][]; `ImportError` without orbax.

    !!! Example

        ```python
        ensemble = ec.shard_ensemble(ensemble, mesh)
        ec.save_sharded("/checkpoints/step_100", ensemble)
        ensemble = ec.load_sharded("/checkpoints/step_100", ensemble).model
        ```
    """
    _check_path(directory, "save_sharded")
    ocp = _orbax("save_sharded")
    saved = collect_states(model, filters, "save_sharded", host=False)
    metadata = dict(saved.metadata)
    metadata["stored"] = {
        name: {"shape": list(np.shape(a)), "dtype": np.dtype(a.dtype).name}
        for name, a in saved.arrays.items()
    }
    target = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(os.path.dirname(target)):
        raise FileNotFoundError(
            f"`save_sharded` cannot write {target!r}: the directory "
            f"{os.path.dirname(target)!r} does not exist. Create it first."
        )
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(
            target,
            args=ocp.args.Composite(
                arrays=ocp.args.PyTreeSave(saved.arrays),
                metadata=ocp.args.JsonSave(metadata),
            ),
            force=True,
        )


def load_sharded(
    directory: str | os.PathLike,
    model: PyTree,
    *,
    strict: bool = False,
    rename: Rename | None = None,
) -> LoadResult:
    """Loads a checkpoint written by [`eqx_collective.save_sharded`][] into `model`,
    each array restored directly into the sharding of the array it replaces (a sharded
    ensemble's members go straight to their devices). Arrays that match nothing in
    `model`, or whose shape differs, are read to the host (and reported or refused as
    by [`eqx_collective.load_states`][]).

    Everything else is as for [`eqx_collective.load_states`][]: the same checks, the
    same `strict` and `rename`, the same [`eqx_collective.LoadResult`][].

    **Arguments:**

    - `directory`: the checkpoint directory.
    - `model`: the model to load into; its states define what is expected, and its
        arrays where the loaded ones go.
    - `strict`, `rename`: as for [`eqx_collective.load_states`][].

    **Returns:** an [`eqx_collective.LoadResult`][].

    **Raises:** as [`eqx_collective.load_states`][]; `FileNotFoundError` if
    `directory` is not a checkpoint directory; `ImportError` without orbax.
    """
    _check_path(directory, "load_sharded")
    ocp = _orbax("load_sharded")
    name = repr(os.fspath(directory))
    directory = os.path.abspath(os.fspath(directory))  # (orbax wants it absolute)
    parts = [os.path.join(directory, part) for part in ("arrays", "metadata")]
    if not all(os.path.isdir(part) for part in parts):
        raise FileNotFoundError(
            f"`load_sharded` found no checkpoint written by `save_sharded` at {name} "
            f"(no 'arrays' and 'metadata' in it). Check the path; a file written by "
            f"`save_states` is loaded with `load_states`."
        )
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        args = ocp.args.Composite(metadata=ocp.args.JsonRestore())
        metadata = checkpointer.restore(directory, args=args)["metadata"]
        try:
            leaves, stored = _checked(metadata)
        except fmt.BadFile as e:
            raise ValueError(
                f"`load_sharded` cannot load {name}: {e}. Pass a directory written by "
                f"`eqx_collective.save_sharded`."
            ) from None
        leaves = renamed("load_sharded", name, leaves, rename)
        index, places = match(name, "load_sharded", model, leaves)
        wanted = {
            e["name"]: _stored(model_leaf(index, places[p]))
            for p, (e, _) in leaves.items()
        }
        restore_args = {
            n: _restore_arg(ocp, wanted.get(n), stored[n]) for n in stored
        }  # (every array, as orbax restores them all: the unwanted to the host)
        args = ocp.args.Composite(
            arrays=ocp.args.PyTreeRestore(restore_args=restore_args)
        )
        arrays = checkpointer.restore(directory, args=args)["arrays"]
    values = {p: _leaf(arrays[e["name"]], e) for p, (e, _) in leaves.items()}
    return finish_load(name, "load_sharded", model, index, places, values, strict)


def _check_path(directory: Any, op: str) -> None:
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(
            f"`{op}` takes the path of the checkpoint directory (a `str` or "
            f"`os.PathLike`), but got {type(directory).__name__}."
        )


def _checked(metadata: Any) -> tuple[fmt.Leaves, dict[str, dict]]:
    """The `(entry, state record)` of each tensor by leaf path, in order, and the
    stored shape and dtype of each tensor by name; `BadFile` if the metadata is
    invalid."""
    stored = metadata.get("stored") if isinstance(metadata, dict) else None
    fmt.check(stored, fmt.STORED, ("its metadata's 'stored' record",))
    assert isinstance(metadata, dict) and isinstance(stored, dict)
    leaves = fmt.entries({k: v for k, v in metadata.items() if k != "stored"})
    fmt.expect(
        stored.keys() == {e["name"] for e, _ in leaves.values()},
        "its 'stored' record does not list the tensors of its metadata",
    )
    for e, _ in leaves.values():
        got = stored[e["name"]]["dtype"]
        fmt.expect(
            got == ("uint32" if e["dtype"] == "key" else e["dtype"]),
            f"the tensor {e['name']!r} is stored as {got}, but its metadata says "
            f"{e['dtype']}",
        )
    return leaves, stored


def _stored(leaf: Any) -> Any:
    """A leaf of the model as stored (a mantissa, PRNG key data)."""
    if isinstance(leaf, u.Quantity):
        leaf = leaf.mantissa
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    return leaf


def _restore_arg(ocp, target: Any, stored: dict):
    """Restores into the sharding of `target` if it is a JAX array of the stored
    shape; to the host otherwise."""
    if isinstance(target, jax.Array) and list(target.shape) == stored["shape"]:
        return ocp.ArrayRestoreArgs(
            sharding=target.sharding, global_shape=tuple(stored["shape"])
        )
    return ocp.RestoreArgs(restore_type=np.ndarray)


def _leaf(array: Any, entry: dict) -> Any:
    if entry["dtype"] == "key":  # (orbax stores every other dtype as it is)
        array = fmt.from_stored(array, entry)
    return fmt.finish_leaf(array, entry)
