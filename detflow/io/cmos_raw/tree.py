"""CMOS raw trees: the attempt directories of a test section and the raw formats in them.

:func:`discover` finds the attempts (the tree layout: :mod:`detflow.io.cmos_raw`); :func:`read_config` and
:func:`read_temperature_log` parse their files; :func:`frame_number`, :func:`name_exptime` and
:func:`name_temperature` read frame file names (the grammar: :mod:`detflow.io.cmos_names`).
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DetflowInputError
from ...instruments import cmos
from .. import cmos_names

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
