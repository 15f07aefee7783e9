"""Roman WFI calibration reference files (the PIT ``CALDIR``) as one lazy xarray dataset.

Each entry is an ASDF file with a ``roman`` node; arrays are full frame (N x N) unless noted:

============ ======================================================================================
mask         ``dq`` uint32
saturation   ``data`` threshold in raw DN (NaN = no check), ``dq``
linearity-   ``data`` (ncoef, N, N) Legendre coefficients, ``Smin``, ``Smax``, ``Sref``, ``dq``
legendre
dark         ``dark_slope`` in DN/s (N x N, or the active (N-8) x (N-8) region), ``data`` cube
gain         ``data`` in e/DN
read         ``data`` single-read noise in DN, optional ``resetnoise``; optional ``amp33`` (``med``,
             ``std``, ``M_PINK``, ``RU_PINK``) and ``anc`` (``C_PINK``, ``U_PINK``): the 1/f model
============ ======================================================================================

The variables of the returned dataset are named ``<entry>_<field>`` (``saturation_data``...) and
chunked like the science tiles, so steps combine them with the data without rechunking.

Values a step cannot use are flagged per pixel, lazily, in ``reference_dq`` (which ``dq_init`` ORs into
the pixel DQ; the rules are listed in ``attrs["reference_checks"]`` and in its record), following
stcal/romancal: a gain that is not finite and > 0 gets NO_GAIN_VALUE | DO_NOT_USE; a read noise that
is not finite and >= 0 gets UNRELIABLE_ERROR | DO_NOT_USE; a non-finite dark (slope, or any resultant
of the cube) gets UNRELIABLE_DARK | DO_NOT_USE and is replaced by 0 (stcal's dark step does the same).
NaN saturation thresholds, linearity models and flats are handled by their steps (NO_SAT_CHECK,
NO_LIN_CORR, NO_FLAT_FIELD).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from .. import schema
from ..errors import DetflowInputError
from ..schema import DQ
from .asdf_lazy import lazy_array, node_get, open_asdf
from .chunking import trim_chunks
from .store.atomic import atomic_write

# entry -> [(field, required, kind)] ; kind "2d" = (N, N); "cube" = (k, N, N); "2d_or_active"
WFI_FIELDS: dict[str, list[tuple[str, bool, str]]] = {
    "mask": [("dq", True, "2d")],
    "saturation": [("data", True, "2d"), ("dq", False, "2d")],
    "linearitylegendre": [
        ("data", True, "cube"),
        ("Smin", True, "2d"),
        ("Smax", True, "2d"),
        ("Sref", True, "2d"),
        ("dq", False, "2d"),
    ],  # fmt: skip
    "dark": [("dark_slope", True, "2d_or_active"), ("data", False, "cube")],
    "gain": [("data", True, "2d")],
    "read": [("data", True, "2d"), ("resetnoise", False, "2d")],
    "ipc4d": [("data", True, "ipc")],
    "flat": [("data", True, "2d_or_active")],
    "biascorr": [("data", True, "cube_active")],
}


def _checksum_cache_dir() -> Path | None:
    value = os.environ.get("DETFLOW_CHECKSUM_CACHE", str(Path.home() / ".cache" / "detflow" / "sha256"))
    return None if value.lower() in ("", "0", "off", "none") else Path(value)


def sha256(path: str | Path, blocksize: int = 2**22) -> str:
    """SHA-256 of a file, remembered per (real path, size, mtime) so that reference files shared by
    thousands of exposures are hashed once. ``DETFLOW_CHECKSUM_CACHE=off`` disables the cache (or
    names another directory); a changed file has a new size or mtime and is hashed again.

    A directory (a zarr store, e.g. a CMOS section store) has the SHA-256 of its content: of one line
    ``<relative path> <size> <sha256 of the file>`` per file, in path order (the same content under
    another folder name has the same digest); remembered per (real path, every file's path, size and
    mtime)."""
    path = Path(path)
    st = path.stat()
    files = _tree(path) if stat.S_ISDIR(st.st_mode) else None
    cache = _checksum_cache_dir()
    entry = None
    if cache is not None:
        stamp = f"{st.st_size}|{st.st_mtime_ns}" if files is None else "|".join(f"{r}|{s}|{m}" for r, s, m, _ in files)
        key = hashlib.sha256(f"{path.resolve()}|{stamp}".encode()).hexdigest()
        entry = cache / key
        try:
            value = entry.read_text().strip()
            if len(value) == 64:
                return value
        except OSError:
            pass
    h = hashlib.sha256()
    if files is None:
        _hash_file(h, path, blocksize)
    else:
        for rel, size, _, full in files:
            one = hashlib.sha256()
            _hash_file(one, full, blocksize)
            h.update(f"{rel} {size} {one.hexdigest()}\n".encode())
    digest = h.hexdigest()
    if entry is not None:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(entry, digest)  # concurrent workers never see a partial entry
        except OSError:
            pass
    return digest


def _hash_file(h, path: Path, blocksize: int) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(blocksize), b""):
            h.update(block)


def _tree(root: Path) -> list[tuple[str, int, int, Path]]:
    """Every file under ``root``: ``(relative posix path, size, mtime_ns, path)``, in path order."""
    out = []
    for p in root.rglob("*"):
        st = p.stat()
        if stat.S_ISREG(st.st_mode):
            out.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns, p))
    return sorted(out)


def _axis_chunks(c, n: int) -> tuple[int, ...]:
    """Explicit chunk sizes along an axis of length ``n`` given a size or a tuple."""
    if isinstance(c, tuple):
        return c
    return tuple(min(c, n - i) for i in range(0, n, c))


def _read_pink_model(path, nside: int, ty) -> dict:
    """The optional 1/f blocks of the ``read`` reference: ``anc`` (``C_PINK``, ``U_PINK``) as the attrs
    of ``read_anc``; ``amp33`` (``med`` and ``std`` (N, w) arrays, ``M_PINK``, ``RU_PINK``) as
    ``read_amp33_med``/``read_amp33_std`` and, with ``C_PINK``, the scalars of ``read_pink_model``."""
    out = {}
    with open_asdf(path) as af:
        roman = node_get(af.tree, "roman")
        anc = node_get(roman, "anc", None)
        pink_anc = {}
        for key in ("C_PINK", "U_PINK"):
            value = node_get(anc, key, None) if anc is not None else None
            if value is not None:
                try:
                    pink_anc[key] = float(value)
                except (TypeError, ValueError):
                    raise DetflowInputError(path, f"roman.anc.{key}", "a number", repr(value)[:40]) from None
        if pink_anc:
            out["read_anc"] = ((), 0.0, pink_anc)
        amp = node_get(roman, "amp33", None)
        if amp is None:
            return out
        for field in ("med", "std"):
            arr = node_get(amp, field, None)
            if arr is None:
                continue
            if np.ndim(arr) != 2 or np.shape(arr)[0] != nside:
                raise DetflowInputError(path, f"roman.amp33.{field}", f"shape ({nside}, w)", f"shape {np.shape(arr)}")
            w = np.shape(arr)[1]
            out[f"read_amp33_{field}"] = ((schema.Y, "x_amp33"), lazy_array(
                path, af, ("roman", "amp33", field), (ty, (w,)), name_hint=f"amp33{field}"))  # fmt: skip
        try:
            pink = {"M_PINK": float(node_get(amp, "M_PINK")), "RU_PINK": float(node_get(amp, "RU_PINK")),
                    "C_PINK": pink_anc["C_PINK"], "valid": bool(node_get(amp, "valid", True)),
                    "std_median": float(np.median(np.asarray(node_get(amp, "std"))))}  # fmt: skip
        except (KeyError, TypeError, ValueError):
            pink = None
        if pink is not None:
            out["read_pink_model"] = ((), 0.0, pink)
    return out


def check_caldir(caldir: dict, required, source: str | Path | None = None) -> dict[str, Path]:
    """Resolve the CALDIR paths, with one error naming the entry for anything missing."""
    out = {}
    for name in required:
        if name not in caldir or caldir[name] in (None, ""):
            raise DetflowInputError(source, f"CALDIR.{name}", "a path to the reference file", "missing")
    for name, value in caldir.items():
        p = Path(value).expanduser()
        if not p.is_file():
            raise DetflowInputError(source, f"CALDIR.{name}", "an existing reference file", str(p))
        out[name] = p
    return out


# reference variable -> (what makes a value unusable, flags, value used instead or None, rule for the record)
_CHECKS = {
    "gain_data": (lambda a: ~(np.isfinite(a) & (a > 0)), DQ.NO_GAIN_VALUE | DQ.DO_NOT_USE, None,
                  "gain not finite and > 0: NO_GAIN_VALUE | DO_NOT_USE"),
    "read_data": (lambda a: ~(np.isfinite(a) & (a >= 0)), DQ.UNRELIABLE_ERROR | DQ.DO_NOT_USE, None,
                  "read noise not finite and >= 0: UNRELIABLE_ERROR | DO_NOT_USE"),
    "dark_dark_slope": (lambda a: ~np.isfinite(a), DQ.UNRELIABLE_DARK | DQ.DO_NOT_USE, 0.0,
                        "dark slope not finite: UNRELIABLE_DARK | DO_NOT_USE, taken as 0"),
    "dark_data": (lambda a: ~np.isfinite(a), DQ.UNRELIABLE_DARK | DQ.DO_NOT_USE, 0.0,
                  "dark cube not finite: UNRELIABLE_DARK | DO_NOT_USE, taken as 0"),
}  # fmt: skip


def check_values(refs: xr.Dataset) -> xr.Dataset:
    """``refs`` with ``reference_dq`` (y, x): the flags of the unusable reference values (:data:`_CHECKS`),
    those values replaced where a replacement is defined; lazy, tiled like the references."""
    flags, rules = None, []
    out = refs.copy()
    for name, (is_bad, bits, fill, rule) in _CHECKS.items():
        if name not in refs:
            continue
        bad = is_bad(refs[name])
        if fill is not None:
            out[name] = refs[name].where(~bad, refs[name].dtype.type(fill)).assign_attrs(refs[name].attrs)
        extra = [d for d in bad.dims if d not in (schema.Y, schema.X)]
        if extra:  # a cube: any bad resultant flags the pixel
            bad = bad.any(extra)
        f = schema.flag_where(bad, bits)
        flags = f if flags is None else flags | f
        rules.append(rule)
    if flags is not None:
        out["reference_dq"] = flags.astype(np.uint32).transpose(schema.Y, schema.X).assign_attrs(schema.dq_attrs())
    out.attrs["reference_checks"] = rules
    return out


def _frame_shapes(caldir: dict[str, Path]) -> dict[str, tuple[int, int]]:
    """The full-frame (y, x) shape each reference implies (from its fields that are full frame only)."""
    out = {}
    for name, fields in WFI_FIELDS.items():
        if name not in caldir:
            continue
        with open_asdf(caldir[name]) as af:
            roman = node_get(af.tree, "roman", None)
            for field, _, kind in fields:
                arr = node_get(roman, field, None) if roman is not None else None
                if arr is not None and kind in ("2d", "cube") and np.ndim(arr) >= 2:
                    out.setdefault(name, tuple(int(v) for v in np.shape(arr)[-2:]))
    return out


def open_wfi_references(caldir: dict[str, Path], nside: int, tile: tuple, nborder: int = 4,
                        source: str | Path | None = None) -> xr.Dataset:  # fmt: skip
    """Open the WFI references of ``caldir`` lazily, validated against an ``nside`` detector with a
    reference border of ``nborder`` pixels, and checked (:func:`check_values`).

    ``tile`` is the (y, x) chunking of the science data: sizes, or explicit chunk tuples. ``source``:
    the L1 file; when every reference agrees on a frame size other than ``nside``, the error names it."""
    ty, tx = tile
    nb = nborder
    shapes = _frame_shapes(caldir)
    if source is not None and shapes and len(set(shapes.values())) == 1:
        (shape,) = set(shapes.values())
        if shape != (nside, nside):
            raise DetflowInputError(source, "data", f"frames of {shape[0]}x{shape[1]} pixels, the shape of its "
                                    f"reference files ({', '.join(f'CALDIR.{k}' for k in shapes)})",
                                    f"{nside}x{nside}")  # fmt: skip
    variables = {}
    for name, fields in WFI_FIELDS.items():
        if name not in caldir:
            continue
        path = caldir[name]
        with open_asdf(path) as af:
            try:
                roman = node_get(af.tree, "roman")
            except KeyError:
                raise DetflowInputError(path, "roman", "a Roman reference file with a 'roman' node",
                                        "missing")  # fmt: skip
            for field, required, kind in fields:
                if node_get(roman, field, None) is None:
                    if required:
                        raise DetflowInputError(path, f"roman.{field}", f"the {name} {field} array",
                                                "missing")  # fmt: skip
                    continue
                shape = tuple(np.shape(node_get(roman, field)))
                ok = {
                    "2d": shape == (nside, nside),
                    "cube": len(shape) == 3 and shape[1:] == (nside, nside),
                    "2d_or_active": shape in ((nside, nside), (nside - 2 * nb, nside - 2 * nb)),
                    "ipc": shape == (3, 3, nside - 2 * nb, nside - 2 * nb),
                    "cube_active": len(shape) == 3 and shape[1:] == (nside - 2 * nb, nside - 2 * nb),
                }[kind]
                if not ok:
                    na = nside - 2 * nb
                    want = {"2d": f"({nside}, {nside})", "cube": f"(k, {nside}, {nside})",
                            "2d_or_active": f"({nside}, {nside}) or ({na}, {na})", "ipc": f"(3, 3, {na}, {na})",
                            "cube_active": f"(k, {na}, {na})"}[kind]  # fmt: skip
                    raise DetflowInputError(path, f"roman.{field}", f"shape {want} (the L1 frames' shape)",
                                            f"shape {shape}")  # fmt: skip
                if kind == "ipc":  # active region only, chunked like the active part of the tiles
                    ychunks = trim_chunks(_axis_chunks(ty, nside), nb)
                    xchunks = trim_chunks(_axis_chunks(tx, nside), nb)
                    arr = lazy_array(path, af, ("roman", field), ((3,), (3,), ychunks, xchunks), name_hint=name)
                    dims = ("ipc_dy", "ipc_dx", "y_active", "x_active")
                elif kind == "cube_active":  # padded to the full frame with zeros on the border
                    arr = lazy_array(path, af, ("roman", field), -1, name_hint=name)
                    arr = da.pad(arr, ((0, 0), (nb, nb), (nb, nb))).rechunk(((shape[0],), ty, tx))
                    dims = (f"{name}_k", schema.Y, schema.X)
                elif len(shape) == 3:
                    arr = lazy_array(path, af, ("roman", field), ((shape[0],), ty, tx), name_hint=name)
                    dims = (f"{name}_k", schema.Y, schema.X)
                elif shape[0] != nside:
                    arr = lazy_array(path, af, ("roman", field), -1, name_hint=name)
                    arr = da.pad(arr, nb, mode="constant", constant_values=0).rechunk((ty, tx))
                    dims = (schema.Y, schema.X)
                else:
                    arr = lazy_array(path, af, ("roman", field), (ty, tx), name_hint=name)
                    dims = (schema.Y, schema.X)
                variables[f"{name}_{field}"] = (dims, arr)
    if "read" in caldir:
        variables.update(_read_pink_model(caldir["read"], nside, ty))
    refs = xr.Dataset(variables, coords={schema.Y: np.arange(nside), schema.X: np.arange(nside)})
    refs.attrs["reference_files"] = [{"name": k, "path": str(v)} for k, v in sorted(caldir.items())]
    return check_values(refs)
