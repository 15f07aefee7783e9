"""The plan of one CMOS section ingest: the new frames of every attempt, validated before any data are written.

:func:`plan_section` reads each attempt's config file and temperature log (:mod:`.tree`) and checks every
frame that is not in the store yet (its size, name, log row and metadata: a finite detector temperature, an
exposure time > 0, >= 0 for a bias, no infinite logged number), reading no pixel data. Bad input raises one
:class:`DetflowInputError` naming the file, the field and what was expected; ``on_error="skip"`` skips the
frame (or the attempt) and lists it in the plan instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DetflowInputError
from ...instruments import cmos
from .. import cmos_names
from .section import _store_state
from .tree import (
    CmosAttempt,
    TemperatureLog,
    _natural,
    config_geometry,
    discover,
    frame_dtype,
    frame_number,
    read_config,
    read_temperature_log,
)

ON_ERROR = ("raise", "skip")


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
                                "CCD_Temp, CCDTemperature or ChipTemp)", f"columns {log.columns}")  # fmt: skip
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
