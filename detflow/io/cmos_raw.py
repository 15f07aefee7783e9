"""CMOS raw calibration trees: discovery, parsing, and ingest into one zarr v3 store per test section.

A test campaign writes bias, dark and flat frames under three section roots
(:data:`detflow.instruments.cmos.SECTIONS`), in attempt directories at any depth::

    TestSection2/20Frames/T-10/0.5s/attempt0/
        configFile.txt          HEIGHT, WIDTH, BIT_DEPTH (FILTER); ``key=value`` or ``key: value``, ``#`` comments
        temperatureLog.csv      one row per frame keyed by FrameNum (dialect sniffed: comma, semicolon, tab, ...)
        frames/frame0.raw       headerless little-endian uint16 (uint8 if BIT_DEPTH <= 8), shape (HEIGHT, WIDTH)
        frames/f1_exp0.5s_T-10.0.raw  ...  or the camera's DarkT-10_exp0.5sAt0f1.raw (detflow.io.cmos_names):
                                           frame number, and set point, exposure, attempt where named

:func:`discover` finds attempts; :func:`read_config` and :func:`read_temperature_log` parse their
files; :func:`ingest_section` validates every frame (size, name, log row, and its metadata: a finite
detector temperature, an exposure time > 0, >= 0 for a bias, no infinite logged number) before any data
are written and writes ``l1/data`` (frame, read, y, x) in the native integer type with the metadata of
:data:`~detflow.instruments.cmos.KEYWORDS` as lower-case coordinates on ``frame`` (and ``path``).
Bad input raises one :class:`DetflowInputError` naming the file, the field and what was expected;
``on_error="skip"`` skips the frame (or the attempt) and lists it in the report instead.

Store layout (``<out>/<caltype>.zarr``)::

    l1/data       (frame, read, y, x) uint16|uint8, zarr chunks (frame_chunk, 1, tile_y, tile_x); attrs
                  units DN, scale_factor 1/data_scale (CF packing: xr.open_zarr gives DN; none if data_scale is 1)
    l1/frame      int64 index; l1/<keyword> coordinates on frame (chunks of COORD_CHUNK)
    l1 attrs      instrument, caltype, section_root, data_scale, height, width, bit_depth, frame_chunk,
                  tile, attempts (config of each attempt, losslessly), history

Ingest tasks read whole-width row strips of ``frame_chunk`` raw files (contiguous reads) and write
whole zarr chunks (a dask chunk is ``frame_chunk`` frames x a multiple of ``tile_y`` rows x the full
width). A store is written under ``<out>.partial-<key>`` (:func:`ingest_key`, a hash of the store, the frames
and the chunks) and renamed into place; a failed ingest removes it, and a re-run of an ingest that was
killed finds its partial store by the key and removes it (logged and listed in the report; another
ingest's partial store of the same output is named, never touched). Re-running on a tree
with new attempts appends only the frames whose ``path`` is not in the store yet: the previous store
is staged by hard links (zarr's local store replaces chunk files, it never writes into them; the
partial last frame-chunk, which the append rewrites, and all metadata are copied), appended to and
swapped in (the previous store moved aside as ``<out>.old-<key>`` between two renames: an ingest that
finds one restores it if ``<out>`` is missing, else removes it, :func:`recover_swap`), so a failed
ingest leaves the previous complete store. Frame order is the ingest order:
attempts by natural order of their path within one ingest, later ingests after earlier ones
(``ds.sortby("path")`` gives an order independent of the ingest history).

``data_scale`` (16 for 12-bit values stored left-shifted in 16 bits) is recorded, never applied to
the stored integers; :func:`open_cmos_section` divides by it, CF readers multiply by ``scale_factor``.

(Over 500 lines: discovery, validation, the store writer and its readers share one on-disk format and its
helpers; the file-name grammar is apart, in :mod:`detflow.io.cmos_names`.)
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import math
import os
import re
import glob
import hashlib
import json
import logging
import shutil
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from .. import schema
from ..errors import DetflowInputError, OutputExistsError
from ..instruments import cmos
from ..schema import sanitize_attrs
from . import cmos_names
from .lock import OutputLock

if TYPE_CHECKING:
    from astropy.io import fits

log = logging.getLogger(__name__)

GROUP = "l1"
FRAME_CHUNK = 128  # frames per zarr chunk (the per-pixel models read every frame of a tile)
TILE = (128, 128)  # (y, x) pixels per zarr chunk: 128 frames x 128 x 128 uint16 = 4 MiB
COORD_CHUNK = 65536
TARGET_TASK_BYTES = 64 * 2**20  # one ingest task (raw integers) / one float32 tile of open_cmos_section
INDEX_NAME = "fits_index.csv"
ON_ERROR = ("raise", "skip")

_T_DIR = re.compile(r"^T_?([-+]?\d+(?:\.\d+)?)(?:C|degC)?$")
_ATTEMPT = re.compile(r"^attempt_?(\d+)$", re.IGNORECASE)
_UNIT = cmos_names.UNITS
_EXP_DIR = re.compile(r"^(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)(s|ms|us)$", re.IGNORECASE)
_MISSING = {"", "nan", "na", "n/a", "none", "null", "-"}
_DELIMITERS = ",;\t|"


# ---- discovery ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CmosAttempt:
    """One attempt directory: its files and what its path says (NaN / -1 where it says nothing)."""

    path: Path
    relpath: str
    temperature: float  # nearest T<float> folder
    attempt: int  # nearest attempt<n> folder
    exposure: float  # nearest <float>s folder, in s
    config: Path | None
    log: Path | None
    frames_dir: Path | None  # frames/, or the attempt directory itself when it holds the .raw files


def _natural(text: str) -> tuple:
    parts = re.split(r"([-+]?\d+(?:\.\d+)?)", text)
    return tuple(float(p) if i % 2 else p.lower() for i, p in enumerate(parts))


def natural_key(relpath: str | Path) -> tuple:
    """Sort key of a relative path: numbers compare as numbers (T-10 < T5 < T25, attempt2 < attempt10)."""
    return tuple(_natural(p) for p in Path(relpath).parts)


def _match(names: dict[str, str], wanted: Iterable[str]) -> str | None:
    for w in wanted:
        if w.lower() in names:
            return names[w.lower()]
    return None


def _from_path(parts: list[str], pattern: re.Pattern) -> re.Match | None:
    for part in reversed(parts):
        m = pattern.match(part)
        if m:
            return m
    return None


def _attempt(root: Path, d: Path, files: dict[str, str], dirs: dict[str, str]) -> CmosAttempt:
    rel = d.relative_to(root)
    parts = list(rel.parts) or [d.name]
    t = _from_path(parts, _T_DIR)
    a = _from_path(parts, _ATTEMPT)
    e = _from_path(parts, _EXP_DIR)
    cfg, log = _match(files, cmos.CONFIG_NAMES), _match(files, cmos.LOG_NAMES)
    fdir = dirs.get(cmos.FRAMES_DIR.lower())
    frames_dir = d / fdir if fdir else (d if any(n.endswith(cmos.RAW_SUFFIX) for n in files) else None)
    return CmosAttempt(path=d, relpath=rel.as_posix(), temperature=float(t.group(1)) if t else math.nan,
                       attempt=int(a.group(1)) if a else -1,
                       exposure=float(e.group(1)) / _UNIT[e.group(2).lower()] if e else math.nan,
                       config=d / cfg if cfg else None, log=d / log if log else None, frames_dir=frames_dir)  # fmt: skip


def discover(section_root: str | Path, search_depth: int = cmos.SEARCH_DEPTH) -> list[CmosAttempt]:
    """Attempt directories under ``section_root`` (depth 0) down to ``search_depth`` levels, in natural order.

    A directory is an attempt when it holds a temperature log, a ``frames/`` folder or ``.raw`` files
    (with a config file, or without one: that is reported when the attempt is read). Discovery does not
    descend into an attempt, nor into hidden folders or ``*.zarr`` stores."""
    root = Path(section_root)
    if not root.is_dir():
        raise DetflowInputError(root, "section root", "an existing directory", "no such directory")
    found: list[CmosAttempt] = []

    def walk(d: Path, depth: int) -> None:
        try:
            entries = list(os.scandir(d))
        except OSError:
            return
        files = {e.name.lower(): e.name for e in entries if e.is_file()}
        dirs = {e.name.lower(): e.name for e in entries if e.is_dir()}
        has_frames = cmos.FRAMES_DIR.lower() in dirs or any(n.endswith(cmos.RAW_SUFFIX) for n in files)
        if has_frames or _match(files, cmos.LOG_NAMES):
            found.append(_attempt(root, d, files, dirs))
            return
        if depth >= search_depth:
            return
        for name in sorted(dirs.values(), key=_natural):
            if not name.startswith(".") and not name.lower().endswith(".zarr"):
                walk(d / name, depth + 1)

    walk(root, 0)
    return sorted(found, key=lambda a: natural_key(a.relpath))


# ---- config file ------------------------------------------------------------------------------------
def read_config(path: str | Path) -> dict[str, str]:
    """``{KEY: value}`` of a config file: ``key=value`` or ``key: value`` lines, ``#`` comments, keys upper-cased."""
    path = Path(path)
    if not path.is_file():
        raise DetflowInputError(path, "config file", "an existing configFile.txt or config.txt", "no such file")
    out: dict[str, str] = {}
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        seps = [k for k in (text.find("="), text.find(":")) if k > 0]
        if not seps:
            raise DetflowInputError(path, f"line {i}", "'key=value' or 'key: value'", repr(line.strip()))
        k = min(seps)
        out[text[:k].strip().upper()] = text[k + 1 :].strip()
    return out


def config_geometry(cfg: dict[str, str], path: str | Path | None = None) -> tuple[int, int, int]:
    """``(HEIGHT, WIDTH, BIT_DEPTH)`` of a parsed config (instrument defaults for missing keys), validated."""
    out = []
    limits = (("HEIGHT", cmos.HEIGHT, 1 << 20), ("WIDTH", cmos.WIDTH, 1 << 20), ("BIT_DEPTH", cmos.BIT_DEPTH, 16))
    for key, default, hi in limits:
        text = cfg.get(key, "")
        if text == "":
            out.append(default)
            continue
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value.is_integer() and 1 <= value <= hi):
            raise DetflowInputError(path, key, f"an integer from 1 to {hi}", repr(text))
        out.append(int(value))
    return out[0], out[1], out[2]


def frame_dtype(bit_depth: int) -> np.dtype:
    """Stored type of a raw frame: little-endian uint16 above 8 bits, uint8 otherwise."""
    return np.dtype("<u2") if bit_depth > 8 else np.dtype("u1")


# ---- temperature log ----------------------------------------------------------------------------------
def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


_COLUMN_KEYWORD = {_norm(k): v for k, v in cmos.LOG_COLUMNS.items()}


@dataclass
class TemperatureLog:
    """A parsed temperature log: rows by frame number, values in keyword units (NaN where missing)."""

    path: Path
    delimiter: str
    columns: list[str]
    mapping: dict[str, str]  # keyword -> log column
    rows: dict[int, dict[str, Any]]
    bad_rows: dict[int, DetflowInputError] = field(default_factory=dict)  # rows with a value that is no number
    lines: dict[int, int] = field(default_factory=dict)  # frame number -> line number in the file
    text: dict[int, dict[str, str]] = field(default_factory=dict)  # frame number -> {keyword: the value as written}


def _number(text: str, delimiter: str) -> float:
    t = text.strip()
    if t.lower() in _MISSING:
        return math.nan
    try:
        return float(t)
    except ValueError:
        if delimiter != "," and t.count(",") == 1 and "." not in t:  # decimal comma
            return float(t.replace(",", "."))
        raise


def read_temperature_log(path: str | Path) -> TemperatureLog:
    """Parse a temperature log: dialect sniffed (``,`` ``;`` tab ``|``), a header row, one row per frame.

    The delimiter is the sniffed one if the header then holds a ``FrameNum`` column, else the first of
    ``, ; tab |`` that does (a semicolon log with decimal commas can sniff as comma-separated)."""
    path = Path(path)
    if not path.is_file():
        raise DetflowInputError(path, "temperature log", "an existing temperatureLog.csv", "no such file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    lines = [(i, ln) for i, ln in enumerate(text.splitlines(), start=1) if ln.strip()]
    if not lines:
        raise DetflowInputError(path, cmos.FRAME_COLUMN, "a header row with a FrameNum column", "an empty file")
    try:
        sniffed = csv.Sniffer().sniff("\n".join(ln for _, ln in lines[:50]), delimiters=_DELIMITERS)
        candidates = [sniffed.delimiter] + [d for d in _DELIMITERS if d != sniffed.delimiter]
    except csv.Error:
        candidates = list(_DELIMITERS)
    frame_key = _norm(cmos.FRAME_COLUMN)
    header: list[str] = []
    delimiter = candidates[0]
    for d in candidates:
        cols = [c.strip() for c in next(csv.reader([lines[0][1]], delimiter=d))]
        if frame_key in (_norm(c) for c in cols):
            header, delimiter = cols, d
            break
    if not header:
        cols = [c.strip() for c in next(csv.reader([lines[0][1]], delimiter=candidates[0]))]
        raise DetflowInputError(path, cmos.FRAME_COLUMN, "a frame-number column 'FrameNum' in the header row",
                                f"columns {cols}")  # fmt: skip
    mapping: dict[str, str] = {}
    index: dict[str, int] = {}
    for j, c in enumerate(header):
        kw = _COLUMN_KEYWORD.get(_norm(c))
        if kw:
            kw_name = kw[0]
            rank = list(_COLUMN_KEYWORD).index(_norm(c))
            if kw_name not in mapping or rank < list(_COLUMN_KEYWORD).index(_norm(mapping[kw_name])):
                mapping[kw_name], index[kw_name] = c, j
    factors = {kw: f for kw, f in cmos.LOG_COLUMNS.values()}  # divisors
    rows: dict[int, dict[str, Any]] = {}
    bad: dict[int, DetflowInputError] = {}
    where: dict[int, int] = {}
    texts: dict[int, dict[str, str]] = {}
    for lineno, line in lines[1:]:
        values = [v.strip() for v in next(csv.reader([line], delimiter=delimiter))]
        if len(values) != len(header):
            raise DetflowInputError(path, f"line {lineno}", f"{len(header)} fields separated by {delimiter!r} like "
                                    "the header", f"{len(values)} fields")  # fmt: skip
        fn_text = values[index["FRAMENUM"]]
        try:
            fn_value = float(fn_text)
            if not fn_value.is_integer() or fn_value < 0:
                raise ValueError
            fn = int(fn_value)
        except ValueError:
            raise DetflowInputError(path, f"{mapping['FRAMENUM']} (line {lineno})", "a frame number (integer >= 0)",
                                    repr(fn_text)) from None  # fmt: skip
        if fn in rows or fn in bad:
            raise DetflowInputError(path, f"{mapping['FRAMENUM']} (line {lineno})", "one row per frame number",
                                    f"frame {fn} again")  # fmt: skip
        row: dict[str, Any] = {"FRAMENUM": fn}
        where[fn] = lineno
        texts[fn] = {kw: values[j] for kw, j in index.items()}
        try:
            for kw, j in index.items():
                if kw == "FRAMENUM":
                    continue
                if factors[kw] is None:
                    row[kw] = values[j]
                    continue
                try:
                    row[kw] = _number(values[j], delimiter) / factors[kw]
                except ValueError:
                    raise DetflowInputError(path, f"{header[j]} (line {lineno})", "a number (or empty)",
                                            repr(values[j])) from None  # fmt: skip
        except DetflowInputError as err:
            bad[fn] = err
            continue
        rows[fn] = row
    return TemperatureLog(path, delimiter, header, mapping, rows, bad, where, texts)


# ---- one attempt -> frames ---------------------------------------------------------------------------------
frame_number = cmos_names.frame_number  # the f<N> / frame<N> of a raw file name (detflow.io.cmos_names)


def name_exptime(path: str | Path) -> float:
    """Exposure time (s) from ``exp[_]<t>s`` (or ms, us) anywhere in a file name; NaN if none."""
    return cmos_names.parse_name(path).exptime


def name_temperature(path: str | Path) -> float:
    """Set point (deg C) from ``T<temp>`` anywhere in a file name; NaN if none."""
    return cmos_names.parse_name(path).temperature


def _raw_files(att: CmosAttempt) -> list[Path]:
    if att.frames_dir is None:
        return []
    return sorted((p for p in att.frames_dir.iterdir() if p.is_file() and p.name.lower().endswith(cmos.RAW_SUFFIX)),
                  key=lambda p: _natural(p.name))  # fmt: skip


@dataclass
class _Geometry:
    height: int
    width: int
    bit_depth: int
    source: str

    @property
    def dtype(self) -> np.dtype:
        return frame_dtype(self.bit_depth)

    @property
    def nbytes(self) -> int:
        return self.height * self.width * self.dtype.itemsize

    def same(self, other: _Geometry) -> bool:
        return (self.height, self.width, self.dtype) == (other.height, other.width, other.dtype)


def _frame_meta(att: CmosAttempt, raw: Path, name: cmos_names.NameFields, row: dict, caltype: str,
                filt: str) -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {kw.lower(): (row.get(kw, "") if kw in cmos.TEXT_KEYWORDS else row.get(kw, math.nan))
                            for kw in cmos.LOG_KEYWORDS}  # fmt: skip
    meta["framenum"] = name.frame
    if math.isnan(meta["exptime"]):  # the log lacks it: the file name, then the <t>s folder
        meta["exptime"] = name.exptime if math.isfinite(name.exptime) else att.exposure
    meta["filetemp"] = name.temperature if math.isfinite(name.temperature) else att.temperature
    meta.update(caltype=caltype, filter=filt, attempt=name.attempt if name.attempt >= 0 else att.attempt,
                path=str(raw.absolute()))  # fmt: skip
    return meta


def _check_meta(meta: dict[str, Any], log: TemperatureLog, raw: Path, att: CmosAttempt) -> None:
    """Refuse a frame whose metadata the models cannot use, naming the file and field where the value came from:
    a detector temperature that is missing or not finite, an exposure time that is missing, not finite or not
    > 0 (>= 0 for a bias frame), any logged number that is infinite."""
    n = meta["framenum"]
    where = f"line {log.lines.get(n, '?')}"
    text = log.text.get(n, {})
    for kw, col in log.mapping.items():
        v = meta.get(kw.lower())
        if isinstance(v, float) and math.isinf(v):
            raise DetflowInputError(log.path, f"{col} ({where})", "a finite number (or empty)", repr(text.get(kw)))
    if "TEMP" not in log.mapping:
        raise DetflowInputError(log.path, "Temperature", "a detector-temperature column (Temperature, CCDTemp, "
                                f"CCD_Temp, CCDTemperature or ChipTemp)", f"columns {log.columns}")  # fmt: skip
    if not math.isfinite(meta["temp"]):
        raise DetflowInputError(log.path, f"{log.mapping['TEMP']} ({where})", "a finite detector temperature "
                                "(deg C)", repr(text.get("TEMP")))  # fmt: skip
    t, bias = meta["exptime"], meta["caltype"] == "BIAS"
    if math.isfinite(t) and (t >= 0 if bias else t > 0):
        return
    low = ">= 0" if bias else "> 0"
    if "EXPTIME" in log.mapping and not math.isnan(log.rows[n].get("EXPTIME", math.nan)):
        raise DetflowInputError(log.path, f"{log.mapping['EXPTIME']} ({where})", f"an exposure time {low} (us)",
                                repr(text.get("EXPTIME")))  # fmt: skip
    if math.isnan(t):
        raise DetflowInputError(log.path, f"ExpTime ({where})", "an exposure time: in the log, as "
                                f"exp<t>s in the file name ({raw.name}) or a <t>s folder", "none")  # fmt: skip
    source = raw if math.isfinite(cmos_names.parse_name(raw).exptime) else att.path
    raise DetflowInputError(source, "exposure time (exp<t>s)" if source == raw else "exposure folder (<t>s)",
                            f"an exposure time {low} s", t)  # fmt: skip


class _Collector:
    """Raise the first error, or (``skip``) record it against the frames it concerns and go on."""

    def __init__(self, on_error: str, caltype: str):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.skip = on_error == "skip"
        self.caltype = caltype
        self.skipped: list[dict] = []

    def __call__(self, err: DetflowInputError, paths: Iterable[Path | str]) -> None:
        if not self.skip:
            raise err
        for p in list(paths) or [err.file]:
            self.skipped.append({"path": str(Path(p).absolute()), "caltype": self.caltype, "file": err.file,
                                 "field": err.field, "reason": str(err)})  # fmt: skip


def _plan_attempt(att: CmosAttempt, caltype: str, known: set[str], geom: _Geometry | None,
                  errors: _Collector) -> tuple[list[dict], dict | None, _Geometry | None]:  # fmt: skip
    """Metadata of the new frames of one attempt, its record for the store attrs, its geometry."""
    raws = [r for r in _raw_files(att) if str(r.absolute()) not in known]
    if not raws:
        return [], None, None
    try:
        if att.config is None:
            raise DetflowInputError(att.path / cmos.CONFIG_NAMES[0], "config file",
                                    f"{' or '.join(cmos.CONFIG_NAMES)} in the attempt directory", "none")  # fmt: skip
        cfg = read_config(att.config)
        h, w, bits = config_geometry(cfg, att.config)
        mine = _Geometry(h, w, bits, str(att.config))
        if geom is not None and not mine.same(geom):
            raise DetflowInputError(att.config, "HEIGHT/WIDTH/BIT_DEPTH", f"{geom.height} x {geom.width}, "
                                    f"{geom.dtype.name} frames like {geom.source}",
                                    f"{h} x {w}, BIT_DEPTH {bits}")  # fmt: skip
        if att.log is None:
            raise DetflowInputError(att.path / cmos.LOG_NAMES[0], "temperature log",
                                    "a temperature log with one row per frame", "none")  # fmt: skip
        log = read_temperature_log(att.log)
    except DetflowInputError as err:
        errors(err, raws)
        return [], None, None
    filt = cfg.get("FILTER", "").strip() or cmos.NO_FILTER
    frames: list[dict] = []
    seen: dict[int, Path] = {}
    for raw in raws:
        try:
            name = cmos_names.parse_name(raw)
            n = frame_number(raw)
            if n in seen:
                raise DetflowInputError(raw, "file name", f"one file per frame number ({n} is also {seen[n].name})",
                                        raw.name)  # fmt: skip
            seen[n] = raw
            size = raw.stat().st_size
            if size != mine.nbytes:
                raise DetflowInputError(raw, "file size", f"{mine.nbytes} bytes ({h} x {w} {mine.dtype.name}, "
                                        f"HEIGHT/WIDTH/BIT_DEPTH of {att.config.name})", f"{size} bytes")  # fmt: skip
            if n in log.bad_rows:
                raise log.bad_rows[n]
            if n not in log.rows:
                raise DetflowInputError(log.path, f"{log.mapping['FRAMENUM']} {n}", f"a row for frame {n} ({raw})",
                                        "no such row")  # fmt: skip
            meta = _frame_meta(att, raw, name, log.rows[n], caltype, filt)
            _check_meta(meta, log, raw, att)
        except DetflowInputError as err:
            errors(err, [raw])
            continue
        frames.append(meta)
    frames.sort(key=lambda m: m["framenum"])
    record = {"path": str(att.path.absolute()), "relpath": att.relpath, "config_file": att.config.name, "config": cfg,
              "temperature_log": att.log.name, "log_delimiter": log.delimiter, "log_columns": log.columns,
              "frames": len(frames)}  # fmt: skip
    return frames, record, mine


@dataclass
class SectionPlan:
    """What an ingest of one section will write (validated; nothing written yet)."""

    caltype: str
    root: Path
    attempts: list[CmosAttempt]
    frames: list[dict]  # metadata of each new frame (lower-case keywords, path)
    records: list[dict]  # attempt records for the store attrs
    geometry: _Geometry | None
    skipped: list[dict]
    known: int  # frames already in the store


def caltype_of(section_root: str | Path) -> str:
    """BIAS, DARK or FLAT from the section folder name (TestSection1/2/3)."""
    name = Path(section_root).absolute().name
    for sec, cal in cmos.SECTIONS.items():
        if name.lower() == sec.lower():
            return cal
    raise DetflowInputError(section_root, "section", f"a folder named {', '.join(cmos.SECTIONS)} (or caltype= "
                            "BIAS/DARK/FLAT)", name)  # fmt: skip


def _check_caltype(caltype: str | None, root: Path) -> str:
    cal = caltype_of(root) if caltype is None else str(caltype).upper()
    if cal not in cmos.CALTYPES:
        raise DetflowInputError(root, "caltype", " or ".join(cmos.CALTYPES), caltype)
    return cal


def plan_section(section_root: str | Path, *, caltype: str | None = None, search_depth: int = cmos.SEARCH_DEPTH,
                 on_error: str = "raise", store: str | Path | None = None) -> SectionPlan:  # fmt: skip
    """Discover and validate one section (the frames not yet in ``store``), reading no pixel data."""
    root = Path(section_root)
    cal = _check_caltype(caltype, root)
    errors = _Collector(on_error, cal)
    attempts = discover(root, search_depth)
    if not attempts:
        raise DetflowInputError(root, "attempts", f"attempt directories (config file + temperature log + frames/) "
                                f"within {search_depth} levels", "none")  # fmt: skip
    known: set[str] = set()
    geom: _Geometry | None = None
    if store is not None and Path(store).exists():
        attrs, paths = _store_state(store, cal)
        known = set(paths)
        geom = _Geometry(attrs["height"], attrs["width"], attrs["bit_depth"], str(store))
    frames: list[dict] = []
    records: list[dict] = []
    for att in attempts:
        new, record, g = _plan_attempt(att, cal, known, geom, errors)
        if record is None:
            continue
        geom = geom or g
        frames.extend(new)
        records.append(record)
    return SectionPlan(cal, root, attempts, frames, records, geom, errors.skipped, len(known))


# ---- the store ---------------------------------------------------------------------------------------------
def _store_state(store: str | Path, caltype: str) -> tuple[dict, list[str]]:
    """Attrs and ingested paths of an existing CMOS store (an error if it is something else)."""
    try:
        g = zarr.open_group(str(store), path=GROUP, mode="r")
        attrs = dict(g.attrs)
        paths = [str(p) for p in g["path"][:]] if "path" in g else []
    except Exception as exc:
        raise DetflowInputError(store, "store", "a CMOS section store written by ingest_section (or overwrite=True)",
                                f"{type(exc).__name__}: {exc}") from None  # fmt: skip
    if attrs.get("instrument") != "cmos" or attrs.get("caltype") != caltype:
        raise DetflowInputError(store, "store", f"a CMOS {caltype} store (or overwrite=True)",
                                f"instrument {attrs.get('instrument')!r}, caltype {attrs.get('caltype')!r}")  # fmt: skip
    return attrs, paths


def _read_rows(paths: tuple[str, ...], shape: tuple[int, int], dtype: str, y0: int, y1: int) -> np.ndarray:
    """Rows ``y0:y1`` of each raw file, as (frames, 1, rows, width) in the native byte order."""
    dt = np.dtype(dtype)
    out = np.empty((len(paths), 1, y1 - y0, shape[1]), dtype=dt.newbyteorder("="))
    nbytes = shape[0] * shape[1] * dt.itemsize
    for i, p in enumerate(paths):
        size = os.path.getsize(p)
        if size != nbytes:  # changed since it was validated
            raise DetflowInputError(p, "file size", f"{nbytes} bytes", f"{size} bytes")
        mm = np.memmap(p, dtype=dt, mode="r", shape=shape)
        out[i, 0] = mm[y0:y1]
        del mm
    return out


def _frame_blocks(n0: int, n: int, fc: int) -> list[tuple[int, int]]:
    """Frame ranges (relative to the new frames) whose absolute positions ``n0 + ...`` fill whole zarr chunks."""
    blocks, start = [], 0
    while start < n:
        stop = min(n, start + fc - (n0 + start) % fc)
        blocks.append((start, stop))
        start = stop
    return blocks


def _row_block(height: int, width: int, itemsize: int, fc: int, ty: int) -> int:
    rows = TARGET_TASK_BYTES // max(1, fc * width * itemsize)
    return min(height, max(ty, rows // ty * ty))


def _coords(frames: list[dict], n0: int) -> dict[str, tuple]:
    coords: dict[str, tuple] = {schema.FRAME: (schema.FRAME, np.arange(n0, n0 + len(frames), dtype=np.int64))}
    for kw in (*cmos.KEYWORDS, "PATH"):
        name = kw.lower()
        values = [m[name] for m in frames]
        if kw in cmos.INT_KEYWORDS:
            arr = np.array(values, dtype=np.int64)
        elif kw in cmos.TEXT_KEYWORDS or kw == "PATH":
            arr = np.array([str(v) for v in values], dtype=object)
        else:
            arr = np.array(values, dtype=np.float64)
        attrs = {"description": cmos.DESCRIPTIONS[kw], "keyword": kw}
        if kw in cmos.UNITS:
            attrs["units"] = cmos.UNITS[kw]
        coords[name] = (schema.FRAME, arr, attrs)
    return coords


def _dataset(frames: list[dict], geom: _Geometry, n0: int, fc: int, tile: tuple[int, int]) -> xr.Dataset:
    """The new frames as a lazy dataset whose dask chunks cover whole zarr chunks of the store."""
    h, w, dt = geom.height, geom.width, geom.dtype
    rows = _row_block(h, w, dt.itemsize, fc, tile[0])
    paths = [m["path"] for m in frames]
    native = dt.newbyteorder("=")
    nested = []  # da.block nesting: frame blocks > read (1) > row strips > x (1)
    for a, b in _frame_blocks(n0, len(frames), fc):
        strips = []
        for y0 in range(0, h, rows):
            y1 = min(h, y0 + rows)
            part = dask.delayed(_read_rows, pure=True)(tuple(paths[a:b]), (h, w), dt.str, y0, y1)
            strips.append([da.from_delayed(part, (b - a, 1, y1 - y0, w), dtype=native)])
        nested.append([strips])
    cube = da.block(nested)
    return xr.Dataset({"data": (schema.DIMS_L1, cube)}, coords=_coords(frames, n0))


def data_attrs(data_scale: float) -> dict[str, Any]:
    """``l1/data``'s attributes: the stored integers are CF-packed ADC counts. ``scale_factor`` = 1 / data_scale
    (absent when data_scale is 1) unpacks them, so CF readers (``xr.open_zarr``) give DN with ``units`` DN."""
    attrs: dict[str, Any] = {"units": "DN", "long_name": "ADC counts",
                             "comment": "stored as the camera wrote them: ADC counts x data_scale (the group "
                                        "attribute); DN = stored x scale_factor"}  # fmt: skip
    if float(data_scale) != 1:
        attrs["scale_factor"] = 1 / float(data_scale)
    return attrs


def _set_data_attrs(store: Path, attrs: dict[str, Any] | None) -> None:
    """Set the attributes of ``l1/data`` (xarray's ``coordinates`` kept) with the CF packing of ``attrs`` only
    (None: none, so that an append writes the integers as they are: xarray re-packs by scale_factor)."""
    arr = zarr.open_array(str(store), path=f"{GROUP}/data", mode="r+", zarr_format=3)
    keep = {k: v for k, v in arr.attrs.items() if k not in ("scale_factor", "add_offset")}
    arr.attrs.put(keep | (attrs or {}))


# Raw counts: blosc lz4 over bit planes. On 12-bit darks stored in 16 bits it encodes ~2.4x faster than
# zarr's default zstd (572 against 236 MB/s in one process here) and compresses better (3.5x against
# 3.3x), since the low 4 bits and the high bits are constant planes; reading is as fast (~0.9 GB/s).
RAW_INT_CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")


def _encoding(fc: int, tile: tuple[int, int]) -> dict:
    enc = {"data": {"chunks": (fc, 1, tile[0], tile[1]), "compressors": [RAW_INT_CODEC]},
           schema.FRAME: {"chunks": (COORD_CHUNK,)}}  # fmt: skip
    for kw in (*cmos.KEYWORDS, "PATH"):
        enc[kw.lower()] = {"chunks": (COORD_CHUNK,)}
    return enc


def _stage_copy(src: Path, dst: Path, keep_chunks: int) -> None:
    """Copy a store for an append: chunk files of ``data`` in frame-chunks ``< keep_chunks`` by hard link
    (they are not written by the append; zarr replaces files rather than writing into them anyway),
    everything else (metadata, coordinates, the partial last frame-chunk) by copy."""
    chunk_root = src / GROUP / "data" / "c"
    for dirpath, _dirs, files in os.walk(src):
        d = Path(dirpath)
        rel = d.relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        link = False
        if d.is_relative_to(chunk_root) and d != chunk_root:
            first = d.relative_to(chunk_root).parts[0]
            link = first.isdigit() and int(first) < keep_chunks
        for f in files:
            if link:
                try:
                    os.link(d / f, dst / rel / f)
                    continue
                except OSError:
                    pass
            shutil.copy2(d / f, dst / rel / f)


def _history(text: str) -> str:
    return f"{_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')} detflow: {text}"


def _version() -> str:
    from .._version import __version__

    return __version__


def ingest_key(plan: SectionPlan, out: Path, data_scale: float, fc: int, tile: tuple[int, int],
               append: bool) -> str:  # fmt: skip
    """A hash of what an ingest writes: the store, the frames (paths, sizes, modification times), the
    chunks, data_scale, and the store it appends to (frames, history). A re-run of the same ingest has the
    same key, so it finds the partial store ``<out>.partial-<key>`` a killed run of it left."""
    spec: dict[str, Any] = {"out": str(out.absolute()), "caltype": plan.caltype, "data_scale": float(data_scale),
                            "frame_chunk": fc, "tile": list(tile), "append": append, "frames": []}  # fmt: skip
    if append:
        g = zarr.open_group(str(out), path=GROUP, mode="r")
        spec["store"] = [list(g["data"].shape), list(g.attrs.get("history", []))]
    for m in plan.frames:
        st = os.stat(m["path"])
        spec["frames"].append([m["path"], st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _partials(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f"{glob.escape(out.name)}.partial-*")) if out.parent.is_dir() else []


def _leftovers(out: Path, tmp: Path | None) -> tuple[list[str], list[str]]:
    """Partial stores of ``out`` left by killed ingests: this ingest's own (``tmp``, same key) is removed;
    the others (another ingest's, killed or still running) are left and named. Both are logged."""
    removed, others = [], []
    for p in _partials(out):
        if p == tmp:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(str(p))
            log.warning("%s: removed the partial store an interrupted run of this ingest left; ingesting again", p)
        else:
            others.append(str(p))
            log.warning("%s: the partial store of another ingest of %s (interrupted, or still running), left as it "
                        "is; once no ingest is running, remove it (`detflow clean`)", p, out.name)  # fmt: skip
    return removed, others


def recover_swap(out: str | Path) -> list[str]:
    """Finish a store swap a killed ingest left half done: ``<out>.old-*`` is the previous store, moved
    aside before the new one was renamed into place. Restored when ``out`` is missing (the new store was
    not in place yet), else removed. Returns what was done, also logged."""
    out = Path(out)
    done = []
    olds = sorted(out.parent.glob(f"{glob.escape(out.name)}.old-*")) if out.parent.is_dir() else []
    for old in olds:
        if not out.exists() and (old / GROUP).is_dir():
            old.rename(out)
            done.append(f"{old}: restored to {out} (an ingest was interrupted while swapping the stores)")
        else:
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"{old}: removed (the store an interrupted ingest had replaced)")
        log.warning("%s", done[-1])
    return done


def _write_plan(plan: SectionPlan, out: Path, data_scale: float, fc: int, tile: tuple[int, int],
                overwrite: bool) -> tuple[Path | None, dict[str, list[str]]]:  # fmt: skip
    """Write (or append) the plan's frames; the store at ``out`` is replaced only when complete. The
    partial store is ``<out>.partial-<key>`` (:func:`ingest_key`): removed when the ingest fails, and
    removed when a re-run of the same ingest finds it after a kill. Returns the store and the leftovers
    found: ``{"removed": [...], "others": [...]}``."""
    if not plan.frames:
        return (out if out.exists() else None), dict(zip(("removed", "others"), _leftovers(out, None)))
    geom = plan.geometry
    append = out.exists() and not overwrite
    if append:
        z = zarr.open_group(str(out), path=GROUP, mode="r")
        fc, tile = int(z["data"].chunks[0]), (int(z["data"].chunks[2]), int(z["data"].chunks[3]))
    else:
        tile = (min(tile[0], geom.height), min(tile[1], geom.width))
    tmp = out.with_name(f"{out.name}.partial-{ingest_key(plan, out, data_scale, fc, tile, append)}")
    found = dict(zip(("removed", "others"), _leftovers(out, tmp)))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if append:
            attrs = dict(z.attrs)
            n0 = int(z["data"].shape[0])
            _stage_copy(out, tmp, n0 // fc)
            _set_data_attrs(tmp, None)
            ds = _dataset(plan.frames, geom, n0, fc, tile)
            ds.to_zarr(str(tmp), group=GROUP, mode="a", append_dim=schema.FRAME, zarr_format=3, consolidated=False,
                       compute=False).compute()  # fmt: skip
            recorded = {r["path"]: r for r in attrs.get("attempts", [])}
            for r in plan.records:
                if r["path"] in recorded:
                    recorded[r["path"]]["frames"] += r["frames"]
                else:
                    recorded[r["path"]] = r
            attrs["attempts"] = sorted(recorded.values(), key=lambda r: natural_key(r["relpath"]))
        else:
            n0 = 0
            ds = _dataset(plan.frames, geom, 0, fc, tile)
            ds.to_zarr(str(tmp), group=GROUP, mode="w-", zarr_format=3, consolidated=False, compute=False,
                       encoding=_encoding(fc, tile)).compute()  # fmt: skip
            attrs = {"instrument": "cmos", "caltype": plan.caltype, "section_root": str(plan.root.absolute()),
                     "data_scale": data_scale, "height": geom.height, "width": geom.width,
                     "bit_depth": geom.bit_depth, "dtype": geom.dtype.newbyteorder("=").name, "frame_chunk": fc,
                     "tile": list(tile), "attempts": plan.records, "history": [],
                     "detflow_version": _version()}  # fmt: skip
        attrs["history"] = list(attrs.get("history", [])) + [
            _history(f"ingest_section {'appended' if append else 'wrote'} {len(plan.frames)} frames from "
                     f"{plan.root} (frames {n0}..{n0 + len(plan.frames) - 1})")]  # fmt: skip
        g = zarr.open_group(str(tmp), path=GROUP, mode="r+", zarr_format=3)
        g.attrs.update(sanitize_attrs(attrs))
        _set_data_attrs(tmp, data_attrs(attrs["data_scale"]))
        root = zarr.open_group(str(tmp), mode="r+", zarr_format=3)
        root.attrs.update({"detflow_product": "cmos_l1", "group": GROUP, "caltype": plan.caltype})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(tmp))
        if out.exists():
            old = out.with_name(f"{out.name}.old-{tmp.name.rsplit('-', 1)[1]}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp.exists():
            note = (f"the partial store {tmp} could not be removed: a re-run of this ingest removes it, or remove "
                    "it yourself (`detflow clean`)")  # fmt: skip
            exc.add_note(note)
            log.error("%s", note)
        raise
    return out, found


@dataclass
class SectionReport:
    """What one section ingest did."""

    caltype: str
    root: Path
    store: Path | None
    ingested: list[str]  # paths of the frames written by this ingest
    already: int  # frames that were in the store before
    skipped: list[dict]  # {"path", "caltype", "file", "field", "reason"}
    n_frames: int  # frames in the store after the ingest
    leftovers: dict[str, list[str]] = field(default_factory=dict)  # partial stores found: removed / others (left)

    def to_dict(self) -> dict:
        return sanitize_attrs({"caltype": self.caltype, "root": self.root, "store": self.store,
                               "ingested": len(self.ingested), "already": self.already, "n_frames": self.n_frames,
                               "skipped": self.skipped, "leftovers": self.leftovers})  # fmt: skip


@dataclass
class IngestReport:
    """What :func:`ingest_tree` did: one :class:`SectionReport` per section, and the FITS index."""

    sections: dict[str, SectionReport]
    index: Path | None

    @property
    def stores(self) -> dict[str, Path]:
        return {k: s.store for k, s in self.sections.items() if s.store is not None}

    @property
    def ingested(self) -> dict[str, int]:
        return {k: len(s.ingested) for k, s in self.sections.items()}

    @property
    def skipped(self) -> list[dict]:
        return [item for s in self.sections.values() for item in s.skipped]

    def to_dict(self) -> dict:
        return {"sections": {k: s.to_dict() for k, s in self.sections.items()}, "index": str(self.index)}


def _check_scale(data_scale: float | None, store: Path, overwrite: bool) -> float:
    if data_scale is not None:
        try:
            ok = math.isfinite(float(data_scale)) and float(data_scale) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise DetflowInputError(None, "data_scale", "a positive number (16 for 12-bit data stored in 16 bits)",
                                    data_scale)  # fmt: skip
    if store.exists() and not overwrite:
        try:
            recorded = zarr.open_group(str(store), path=GROUP, mode="r").attrs.get("data_scale", 1)
        except Exception as exc:
            raise DetflowInputError(store, "store", "a CMOS section store written by ingest_section (or "
                                    "overwrite=True)", f"{type(exc).__name__}: {exc}") from None  # fmt: skip
        if data_scale is not None and float(data_scale) != float(recorded):
            raise DetflowInputError(store, "data_scale", f"{recorded} as recorded in the store (or overwrite=True)",
                                    data_scale)  # fmt: skip
        return recorded
    if data_scale is None:
        return 1
    return int(data_scale) if float(data_scale).is_integer() else float(data_scale)


def _check_chunks(frame_chunk: int, tile: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    try:
        ok = len(tuple(tile)) == 2 and all(int(v) == v and v >= 1 for v in (frame_chunk, *tile))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise DetflowInputError(None, "frame_chunk/tile", "positive integers (frames; (rows, columns))",
                                (frame_chunk, tile))  # fmt: skip
    return int(frame_chunk), (int(tile[0]), int(tile[1]))


def _finish(plan: SectionPlan, out: Path, data_scale: float | None, fc: int, tile: tuple[int, int],
            overwrite: bool, recovered: list[str]) -> SectionReport:  # fmt: skip
    store, leftovers = _write_plan(plan, out, data_scale, fc, tile, overwrite)
    n = int(zarr.open_group(str(store), path=GROUP, mode="r")["data"].shape[0]) if store else 0
    return SectionReport(plan.caltype, plan.root, store, [m["path"] for m in plan.frames], plan.known, plan.skipped, n,
                         {**leftovers, "swap": recovered})  # fmt: skip


@contextlib.contextmanager
def _locked(outs: Iterable[Path]):
    """Hold the output lock (:mod:`detflow.io.lock`) of every section store an ingest writes: a second
    ingest (or run) into the same store is refused at once instead of sharing its partial store."""
    with contextlib.ExitStack() as stack:
        for out in outs:
            out.parent.mkdir(parents=True, exist_ok=True)
            stack.callback(OutputLock(out).acquire().release)
        yield


def ingest_section(section_root: str | Path, out_store: str | Path, *, caltype: str | None = None,
                   search_depth: int = cmos.SEARCH_DEPTH, data_scale: float | None = None, on_error: str = "raise",
                   frame_chunk: int = FRAME_CHUNK, tile: tuple[int, int] = TILE, overwrite: bool = False,
                   index: bool = True) -> SectionReport:  # fmt: skip
    """Ingest one test section into ``out_store`` (appending the frames not in it yet) and refresh the index.

    ``caltype`` defaults to the section folder name; ``data_scale`` (default 1, or the store's) is
    recorded, not applied; ``frame_chunk`` and ``tile`` set the zarr chunks of a new store (an append
    keeps the store's). ``overwrite`` re-ingests everything into a new store. Every frame is validated
    before any data are written; ``on_error="skip"`` lists bad frames in the report instead of raising.
    With ``index``, ``fits_index.csv`` next to the store is rewritten from every CMOS store there."""
    out = Path(out_store)
    frame_chunk, tile = _check_chunks(frame_chunk, tile)
    with _locked([out]):
        recovered = recover_swap(out)
        scale = _check_scale(data_scale, out, overwrite)
        plan = plan_section(section_root, caltype=caltype, search_depth=search_depth, on_error=on_error,
                            store=None if overwrite else out)  # fmt: skip
        report = _finish(plan, out, scale, frame_chunk, tile, overwrite, recovered)
    if index and report.store is not None:
        write_fits_index(out.parent)
    return report


def ingest_tree(bias_root: str | Path | None, dark_root: str | Path | None, flat_root: str | Path | None,
                out_dir: str | Path, *, skip: Iterable[str] = (), search_depth: int = cmos.SEARCH_DEPTH,
                data_scale: float | None = None, on_error: str = "raise", frame_chunk: int = FRAME_CHUNK,
                tile: tuple[int, int] = TILE, overwrite: bool = False) -> IngestReport:  # fmt: skip
    """Ingest the three sections into ``out_dir/{bias,dark,flat}.zarr`` and write ``out_dir/fits_index.csv``.

    ``skip`` names sections not to ingest (``"bias"``, ``"dark"``, ``"flat"``); a root of None is
    skipped too. All sections are validated before any store is written."""
    out_dir = Path(out_dir)
    frame_chunk, tile = _check_chunks(frame_chunk, tile)
    skip_set = {str(s).upper() for s in skip}
    unknown = skip_set - set(cmos.CALTYPES)
    if unknown:
        raise DetflowInputError(None, "skip", "section names among bias, dark, flat", sorted(unknown))
    roots = {cal: root for cal, root in zip(cmos.CALTYPES, (bias_root, dark_root, flat_root))
             if root is not None and cal not in skip_set}  # fmt: skip
    outs = {cal: out_dir / f"{cal.lower()}.zarr" for cal in roots}
    with _locked(outs.values()):
        plans: dict[str, tuple[SectionPlan, Path, float, list[str]]] = {}
        for cal, root in roots.items():
            out = outs[cal]
            recovered = recover_swap(out)
            scale = _check_scale(data_scale, out, overwrite)
            plans[cal] = (plan_section(root, caltype=cal, search_depth=search_depth, on_error=on_error,
                                       store=None if overwrite else out), out, scale, recovered)  # fmt: skip
        sections = {cal: _finish(plan, out, scale, frame_chunk, tile, overwrite, recovered)
                    for cal, (plan, out, scale, recovered) in plans.items()}  # fmt: skip
    idx = write_fits_index(out_dir) if any(s.store for s in sections.values()) else None
    return IngestReport(sections, idx)


# ---- reading back -------------------------------------------------------------------------------------------
def _dask_tile(n: int, h: int, w: int, ty: int, tx: int, target: int) -> tuple[int, int]:
    """Multiples of the zarr tile (x first, then y) while a float32 tile of every frame stays under ``target``."""
    per_px = 4 * max(1, n)
    while tx < w and per_px * ty * min(w, 2 * tx) <= target:
        tx = min(w, 2 * tx)
    while ty < h and per_px * min(h, 2 * ty) * tx <= target:
        ty = min(h, 2 * ty)
    return ty, tx


def _plain(coord: xr.DataArray) -> xr.DataArray:
    """zarr v3 reads text as numpy's variable-width StringDType, which ``astype(str)`` cannot cast:
    fixed-width unicode instead."""
    if coord.dtype.kind == "T":
        return coord.copy(data=np.array(coord.values.tolist(), dtype=str))
    return coord


def open_cmos_section(store: str | Path, *, scaled: bool = True, chunks: dict | None = None,
                      target_bytes: int = TARGET_TASK_BYTES) -> xr.Dataset:  # fmt: skip
    """A section store as a lazy dataset: ``data`` (frame, y, x) float32 divided by the recorded
    ``data_scale`` (``scaled=False``: the stored integers, (frame, read, y, x)), with every frame of a
    pixel tile in one dask chunk. Tiles are multiples of the zarr tiles (or ``chunks={"y":, "x":}``,
    which should be too); coordinates are loaded."""
    store = Path(store)
    if not store.exists():
        raise DetflowInputError(store, "store", "an existing CMOS section store", "no such path")
    z = zarr.open_group(str(store), path=GROUP, mode="r")["data"]
    n, _, h, w = z.shape
    _, _, ty, tx = z.chunks
    if chunks:
        ty, tx = int(chunks.get("y", ty)), int(chunks.get("x", tx))
    else:
        ty, tx = _dask_tile(n, h, w, ty, tx, target_bytes)
    ds = xr.open_zarr(str(store), group=GROUP, chunks={schema.FRAME: -1, schema.READ: -1, schema.Y: ty, schema.X: tx},
                      mask_and_scale={"data": False})  # fmt: skip  (the stored integers: / data_scale below)
    ds = ds.assign_coords({c: _plain(ds[c].load()) for c in ds.coords})
    ds.encoding["source"] = str(store)
    if not scaled:
        return ds
    scale = float(ds.attrs.get("data_scale", 1))
    data = ds["data"].isel({schema.READ: 0}, drop=True).astype(np.float32)
    if scale != 1:
        data = data / np.float32(scale)
    data.attrs = {"units": "DN", "long_name": "raw counts / data_scale", "data_scale": ds.attrs.get("data_scale", 1)}
    return ds.assign(data=data).drop_dims(schema.READ, errors="ignore")


# ---- FITS index and export ------------------------------------------------------------------------------------
def _cell(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(float(v)) else repr(float(v))
    if isinstance(v, (np.integer, int)):
        return str(int(v))
    return str(v)


def _section_stores(out_dir: Path) -> list[Path]:
    found = []
    for p in sorted(out_dir.glob("*.zarr")):
        try:
            attrs = zarr.open_group(str(p), path=GROUP, mode="r").attrs
        except Exception:
            continue
        if attrs.get("instrument") == "cmos":
            rank = cmos.CALTYPES.index(attrs["caltype"]) if attrs.get("caltype") in cmos.CALTYPES else 9
            found.append((rank, p.name, p))
    return [p for *_, p in sorted(found)]


def write_fits_index(out_dir: str | Path) -> Path:
    """``out_dir/fits_index.csv`` from every CMOS section store in ``out_dir``: one row per frame, columns
    :data:`~detflow.instruments.cmos.INDEX_COLUMNS` (missing values empty). Written via a temporary file."""
    out_dir = Path(out_dir)
    path = out_dir / INDEX_NAME
    tmp = path.with_name(f"{INDEX_NAME}.partial-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(cmos.INDEX_COLUMNS)
            for store in _section_stores(out_dir):
                g = zarr.open_group(str(store), path=GROUP, mode="r")
                cols = {c: g[c.lower()][:] for c in cmos.INDEX_COLUMNS}
                for i in range(len(cols["PATH"])):
                    writer.writerow([_cell(cols[c][i]) for c in cmos.INDEX_COLUMNS])
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_fits_index(path: str | Path) -> list[dict[str, str]]:
    """Rows of a ``fits_index.csv`` as dicts of strings."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def fits_header(meta: dict[str, Any], data_scale: float = 1) -> fits.Header:
    """FITS header cards of one frame's metadata (lower-case keyword names); missing values left out."""
    from astropy.io import fits

    hdr = fits.Header()
    for kw in (*cmos.INDEX_COLUMNS[1:], "PATH"):
        v = meta.get(kw.lower())
        if v is None or (isinstance(v, (float, np.floating)) and not math.isfinite(float(v))):
            continue
        if isinstance(v, (np.integer, int)):
            v = int(v)
        elif isinstance(v, (np.floating, float)):
            v = float(v)
        else:
            v = str(v)
        if len(kw) > 8:  # TIMESTAMP: a HIERARCH card (astropy reads it as header["TIMESTAMP"])
            hdr[f"HIERARCH {kw}"] = v
        elif kw == "PATH" or isinstance(v, str):
            hdr[kw] = v  # long strings continue (CONTINUE cards)
        else:
            hdr[kw] = (v, cmos.DESCRIPTIONS.get(kw, "")[:46])
    hdr["DATASCL"] = (data_scale, "ADC counts = data / DATASCL")
    hdr["ORIGIN"] = "detflow"
    return hdr


def export_fits(store: str | Path, outdir: str | Path, *, overwrite: bool = False,
                prefix: str | None = None) -> list[Path]:  # fmt: skip
    """One FITS file per frame (``<caltype>_<frame:06d>.fits``): a primary HDU with the frame in its native
    integer type and the index keywords. Existing files are refused before anything is written."""
    from astropy.io import fits

    ds = open_cmos_section(store, scaled=False)
    attrs = ds.attrs
    prefix = prefix or str(attrs.get("caltype", "cmos")).lower()
    outdir = Path(outdir)
    names = [outdir / f"{prefix}_{i:06d}.fits" for i in range(ds.sizes[schema.FRAME])]
    clash = [p for p in names if p.exists()]
    if clash and not overwrite:
        raise OutputExistsError(clash[0], "outdir", "FITS files that do not exist yet (or overwrite=True)",
                                f"{len(clash)} exist")  # fmt: skip
    outdir.mkdir(parents=True, exist_ok=True)
    fc = int(zarr.open_group(str(store), path=GROUP, mode="r")["data"].chunks[0])
    coords = {c: ds[c].values for c in ds.coords if ds[c].dims == (schema.FRAME,)}
    z = zarr.open_group(str(store), path=GROUP, mode="r")["data"]
    frame_bytes = z.shape[2] * z.shape[3] * z.dtype.itemsize
    step = max(1, min(fc, TARGET_TASK_BYTES // frame_bytes))  # frames per read: a frame-chunk, memory bounded
    for a in range(0, ds.sizes[schema.FRAME], step):
        block = z[a : a + step, 0]
        for k in range(block.shape[0]):
            i = a + k
            hdr = fits_header({c: v[i] for c, v in coords.items()}, attrs.get("data_scale", 1))
            tmp = names[i].with_name(names[i].name + f".partial-{os.getpid()}")
            fits.PrimaryHDU(block[k], header=hdr).writeto(tmp, overwrite=True)
            tmp.replace(names[i])
    return names
