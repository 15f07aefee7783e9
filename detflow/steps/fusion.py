"""One generic fusion: a chain of step functions run in one in-memory task per block of frames.

Step by step, each ``xr.map_blocks`` step and each coordinate it carries is a task per chunk (97 per
chunk of 4 EXCAM frames), most of them a few microseconds; the scheduler's few milliseconds per task
then leave the workers' threads idle a third of the time. Fused, a block of frames is one task that runs
the whole chain (the *same* step functions, on an in-memory dataset of those frames) plus one small task
per output variable.

It lives with the steps, not in the runtime: it builds a graph (computes nothing, opens no file) and a
plan (instrument layer, which never imports the runtime) calls it.

:func:`fuse_frames` takes the chain's lazy products (built by calling the chain on the lazy input: they
give the structure, coordinates and step records) and replaces the data of every per-frame variable by
the fused tasks' output. Equal bit for bit to the unfused graph (``tests/test_excam_fused.py``,
``tests/test_fusion.py``). The chain must treat frames independently (a map over ``frame``).
"""

from __future__ import annotations

from typing import Callable

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ..schema import FRAME

# chain(l1, refs, params) -> {level: dataset}: lazy on a lazy l1, eager on an in-memory one
Chain = Callable[[xr.Dataset, xr.Dataset, dict], dict[str, xr.Dataset]]


def _run_block(raw: np.ndarray, pos: np.ndarray, ctx: dict) -> dict:
    """One block's frames (at positions ``pos`` of the data set) through the chain, in memory: the steps
    see a small data set of these frames (their coordinates and the attributes, ``inputs`` cut to them)."""
    frame = slice(int(pos[0]), int(pos[-1]) + 1)
    coords = {k: (dims, v[frame] if dims[:1] == (FRAME,) else v) for k, (dims, v) in ctx["coords"].items()}
    attrs = dict(ctx["attrs"], inputs=ctx["attrs"].get("inputs", [])[frame])
    l1 = xr.Dataset({ctx["var"]: (ctx["dims"], raw)}, coords=coords, attrs=attrs)
    prods = ctx["chain"](l1, ctx["refs"], ctx["params"])  # numpy throughout: nothing here is lazy
    return {(level, v): np.asarray(prod[v].values) for level, prod in prods.items() for v in prod.data_vars}


def _pick(block: dict, key: tuple[str, str]) -> np.ndarray:
    return block[key]


def _with_refs(ctx: dict, load_refs: Callable[..., xr.Dataset], args: tuple) -> dict:
    return dict(ctx, refs=load_refs(*args))


def fuse_frames(l1: xr.Dataset, refs: xr.Dataset, params: dict, chain: Chain, lazy: dict[str, xr.Dataset],
                var: str = "data", attrs: dict | None = None,
                load_refs: tuple[Callable[..., xr.Dataset], tuple] | None = None) -> dict[str, xr.Dataset]:  # fmt: skip
    """The products ``lazy`` (``chain`` applied to the lazy ``l1``) with the data of every per-frame
    variable computed by one task per chunk of ``l1[var]`` along ``frame`` that runs ``chain`` in memory.

    ``attrs``: the input attributes the chain's tasks see (default ``l1.attrs``; pass a trimmed copy to keep
    the graph small). ``load_refs = (function, args)``: the reference dataset is loaded by one task on a
    worker (``function(*args)``: e.g. read from its files) whose result the block tasks share, instead of
    being put into the graph (the client would send tens of MB to the scheduler); without it ``refs`` is
    loaded here and goes into the graph."""
    raw = l1[var].data
    ctx = {
        "var": var, "dims": l1[var].dims, "chain": chain, "params": params,
        "coords": {k: (v.dims, np.asarray(v.values)) for k, v in l1.coords.items()},
        "attrs": dict(l1.attrs) if attrs is None else attrs,
    }  # fmt: skip
    if load_refs is not None:
        ctx = dask.delayed(_with_refs, pure=True)(ctx, *load_refs)
    else:
        ctx = dask.delayed(dict(ctx, refs=refs.load() if refs is not None else None), pure=True)
    letters = "".join(chr(ord("a") + i) for i in range(raw.ndim))
    pos = da.arange(raw.shape[0], chunks=(raw.chunks[0],))
    blocks = da.blockwise(_run_block, "a", raw, letters, pos, "a", ctx, None, dtype=object, concatenate=True,
                          meta=np.empty((0,), dtype=object))  # fmt: skip
    out = {}
    for level, tmpl in lazy.items():
        prod = tmpl.copy()
        for name, v in tmpl.data_vars.items():
            if v.dims[:1] != (FRAME,) or not isinstance(v.data, da.Array):
                continue
            idx = "a" + letters[1 : v.ndim]
            new_axes = {c: n for c, n in zip(idx[1:], v.shape[1:])}
            arr = da.blockwise(_pick, idx, blocks, "a", new_axes=new_axes, key=(level, name), dtype=v.dtype,
                               meta=np.empty((0,) * v.ndim, dtype=v.dtype))  # fmt: skip
            prod[name] = v.copy(data=arr)
        out[level] = prod
    return out
