"""Lazy access to arrays inside ASDF files, for dask graphs that run on remote workers.

An :class:`AsdfArray` names a file and a path in its tree; it is picklable and reads only the slice a
task asks for (memory-mapped when the block is uncompressed). Files written by roman_datamodels carry
tags of its schemas; they are read with or without roman_datamodels installed.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import asdf
import dask.array as da
import numpy as np

from ..errors import CorruptInputError, DetflowInputError


def open_asdf(path: str | Path, *, memmap: bool = True) -> asdf.AsdfFile:
    """Open an ASDF file read-only, turning any failure into one :class:`DetflowInputError`."""
    path = Path(path)
    if not path.exists():
        raise DetflowInputError(path, "file", "an existing ASDF file", "no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown tags when roman_datamodels is not installed
            return asdf.open(path, mode="r", memmap=memmap, lazy_load=True)
    except Exception as exc:  # asdf raises many types for a damaged file
        raise CorruptInputError(path, "file", "a readable ASDF file", f"{type(exc).__name__}: {exc}")


def node_get(node: Any, key: str, default: Any = KeyError) -> Any:
    """Item or attribute ``key`` of an ASDF tree node (plain dicts and roman_datamodels nodes alike)."""
    try:
        return node[key]
    except (KeyError, TypeError, IndexError, AttributeError):
        pass
    if hasattr(node, key):
        return getattr(node, key)
    if default is KeyError:
        raise KeyError(key)
    return default


def tree_get(tree: Any, keys: tuple[str, ...]) -> Any:
    node = tree
    for k in keys:
        node = node_get(node, k)
    return node


def to_plain(node: Any) -> Any:
    """A tree of dicts, lists, numbers and strings (arrays summarised) for provenance attrs."""
    if isinstance(node, (str, int, float, bool)) or node is None:
        return node
    if isinstance(node, np.generic):
        return node.item()
    if hasattr(node, "shape") and hasattr(node, "dtype"):
        if getattr(node, "size", 0) <= 64:
            return np.asarray(node).tolist()
        return {"array": {"shape": list(node.shape), "dtype": str(node.dtype)}}
    if isinstance(node, dict) or hasattr(node, "items"):
        try:
            return {str(k): to_plain(v) for k, v in node.items()}
        except Exception:
            pass
    if isinstance(node, (list, tuple)):
        return [to_plain(v) for v in node]
    if hasattr(node, "to_value"):  # astropy Time/Quantity
        try:
            return str(node)
        except Exception:
            pass
    return str(node)


class AsdfArray:
    """Array-like proxy for ``tree[keys]`` in an ASDF file; slicing opens the file and reads."""

    def __init__(self, path: str | Path, keys: tuple[str, ...], shape, dtype):
        self.path = str(path)
        self.keys = tuple(keys)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, index):
        with open_asdf(self.path) as af:
            arr = tree_get(af.tree, self.keys)
            return np.array(arr[index], dtype=self.dtype, copy=True)

    def __repr__(self) -> str:
        return f"AsdfArray({self.path!r}, {'/'.join(self.keys)}, {self.shape}, {self.dtype})"


def lazy_array(path, af: asdf.AsdfFile, keys: tuple[str, ...], chunks, *, name_hint: str = "") -> da.Array:
    """A dask array over ``af.tree[keys]``; checks that the whole block is present in the file."""
    try:
        arr = tree_get(af.tree, keys)
    except KeyError:
        raise DetflowInputError(path, ".".join(keys), "an array at this path of the ASDF tree", "missing")
    shape = tuple(np.shape(arr))
    dtype = getattr(arr, "dtype", None)
    if dtype is None or len(shape) == 0:
        raise DetflowInputError(path, ".".join(keys), "an array", type(arr).__name__)
    try:  # touch the last element: a truncated file fails here, not in the middle of a run
        _ = np.asarray(arr[(-1,) * len(shape)])
    except Exception as exc:
        raise CorruptInputError(path, ".".join(keys), f"a complete {shape} {dtype} data block", f"unreadable ({exc})")
    proxy = AsdfArray(path, keys, shape, dtype)
    # the name must differ per array of a file: dask treats equal names as the same array
    token = f"asdf-{name_hint or keys[-1]}-{Path(path).name}-{dask_token(_file_token(path), keys, chunks)}"
    return da.from_array(proxy, chunks=chunks, name=token, asarray=True, fancy=False)


def _file_token(path) -> str:
    st = Path(path).stat()
    return dask_token(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def dask_token(*args) -> str:
    from dask.base import tokenize

    return tokenize(*args)
