"""The PIT ``gen_cal_image`` YAML (``IN``, ``OUT``, ``CALDIR``, ``RAMP_OPT_PARS``, ``JUMP_DETECT_PARS``,
``EXCLUDE_FIRST``, ``SATURATION_BACKUP``, ``SKYORDER``, ``FITSWCS``, ``FITSOUT``, ``NOISE``...) translated key
by key into a detflow WFI job (:func:`from_pit`); every wrong key, type or shape is reported at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DetflowInputError
from ..steps.wfi_noise import parse_layers
from .base import resolve_path

PIT_KEYS_TRANSLATED = {"IN", "OUT", "CALDIR", "RAMP_OPT_PARS", "JUMP_DETECT_PARS", "EXCLUDE_FIRST",
                       "SATURATION_BACKUP", "SKYORDER", "FITSWCS", "FITSOUT", "NOISE", "NOISE_PRECISION"}  # fmt: skip
PIT_NOISE_KEYS = {"LAYER", "SEED", "OUT", "TEMP"}  # TEMP: the PIT's scratch file, not needed by detflow
PIT_KEYS_LATER: dict[str, str] = {}  # recorded SKIPPED unless the recipe runs it
PIT_KEYS_OFF_ONLY = {"romancal_ramp_fit", "correct_wfi18_transient", "SLICEOUT"}
PIT_CALDIR_LATER = {"dark_decay": "dark decay"}
PIT_KEYS = PIT_KEYS_TRANSLATED | set(PIT_KEYS_LATER) | PIT_KEYS_OFF_ONLY


def _number(errors: list, source, field: str, value, kind=float, what: str = "a number"):
    """``kind(value)`` of a PIT value, or None with an error recorded (YAML gives numbers as numbers)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and kind is int and float(value) != int(value):
        ok = False
    if not ok:
        errors.append(DetflowInputError(source, field, what, repr(value)[:80]))
        return None
    return kind(value)


def _flag(errors: list, source, field: str, value, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool) and value not in (0, 1):
        errors.append(DetflowInputError(source, field, "true or false", repr(value)[:80]))
        return default
    return bool(value)


def _mapping(errors: list, source, field: str, value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(DetflowInputError(source, field, what, f"{type(value).__name__} {value!r}"[:80]))
        return {}
    return value


def _path(errors: list, source, field: str, value) -> str | None:
    if not isinstance(value, (str, Path)) or not str(value):
        errors.append(DetflowInputError(source, field, "a file path", repr(value)[:80]))
        return None
    return str(value)


def from_pit(raw: dict, source: str | None = None) -> dict:
    """Translate a PIT ``gen_cal_image`` configuration into a detflow job dict. Every problem found is
    reported (one :class:`DetflowInputError` carrying them all)."""
    errors: list[DetflowInputError] = []
    for key in raw:
        if key not in PIT_KEYS:
            errors.append(DetflowInputError(source, key, "a gen_cal_image key (" + ", ".join(
                sorted(PIT_KEYS_TRANSLATED | set(PIT_KEYS_LATER))) + ")", "unknown key"))  # fmt: skip
    for key in PIT_KEYS_OFF_ONLY:
        if raw.get(key):
            errors.append(DetflowInputError(source, key, "false (this option is not supported by detflow)", raw[key]))
    for key, what in (("IN", "the L1 file"), ("OUT", "the output path"), ("CALDIR", "the reference files")):
        if key not in raw:
            errors.append(DetflowInputError(source, key, what, "missing"))
    base = Path(source).resolve().parent if source else Path(".").resolve()
    inp = raw.get("IN")
    if isinstance(inp, list):
        inp = [_path(errors, source, f"IN[{i}]", v) for i, v in enumerate(inp)]
    elif "IN" in raw:
        inp = _path(errors, source, "IN", inp)
    out_path = _path(errors, source, "OUT", raw["OUT"]) if "OUT" in raw else None
    caldir = {}
    for k, v in _mapping(errors, source, "CALDIR", raw.get("CALDIR"),
                         "a mapping of reference names to file paths").items():  # fmt: skip
        p = _path(errors, source, f"CALDIR.{k}", v)
        if p is not None:
            caldir[str(k)] = resolve_path(base, p)
    not_applied = [f"{k} ({what})" for k, what in PIT_KEYS_LATER.items() if raw.get(k) not in (None, False)]
    not_applied += [f"CALDIR.{k} ({what})" for k, what in PIT_CALDIR_LATER.items() if k in caldir]
    steps: dict[str, dict] = {}
    ramp: dict[str, Any] = {}
    for key, allowed in (("RAMP_OPT_PARS", ("slope", "gain", "sigma_read")),
                         ("JUMP_DETECT_PARS", ("SthreshA", "SthreshB", "IthreshA", "IthreshB"))):  # fmt: skip
        pars = _mapping(errors, source, key, raw.get(key), f"a mapping of {', '.join(allowed)} to numbers")
        for k, v in pars.items():
            if k not in allowed:
                names = f"{', '.join(allowed[:-1])} or {allowed[-1]}"
                errors.append(DetflowInputError(source, f"{key}.{k}", names, "unknown key"))
                continue
            value = _number(errors, source, f"{key}.{k}", v)
            if value is not None:
                ramp[k] = value
    exclude_first = _flag(errors, source, "EXCLUDE_FIRST", raw.get("EXCLUDE_FIRST"), True)
    steps["ramp_fit"] = ramp | {"pit_compat": True}  # a PIT configuration asks for the PIT's ramp numerics
    if raw.get("SKYORDER") is not None:
        order = _number(errors, source, "SKYORDER", raw["SKYORDER"], int, "an integer (the sky polynomial order)")
        if order is not None:
            steps["sky"] = {"order": order}
    if "SATURATION_BACKUP" in raw:
        backup = _number(errors, source, "SATURATION_BACKUP", raw["SATURATION_BACKUP"], int, "an integer")
        if backup is not None:
            steps["saturation"] = {"backup": backup}
    out: dict[str, Any] = {}
    if raw.get("FITSWCS"):
        wcs = _path(errors, source, "FITSWCS", raw["FITSWCS"])
        if wcs is not None:
            out["wcs"] = str(resolve_path(base, wcs))
    if raw.get("NOISE") is not None:
        noise = _mapping(errors, source, "NOISE", raw["NOISE"], "a mapping with LAYER, SEED and OUT")
        for key in noise:
            if key not in PIT_NOISE_KEYS:
                errors.append(DetflowInputError(source, f"NOISE.{key}", "LAYER, SEED, OUT or TEMP", "unknown key"))
        for key in ("LAYER", "SEED"):
            if noise and key not in noise:
                errors.append(DetflowInputError(source, f"NOISE.{key}", "a value", "missing"))
        if "LAYER" in noise and "SEED" in noise:
            layers = noise["LAYER"] if isinstance(noise["LAYER"], list) else [noise["LAYER"]]
            try:
                parse_layers(layers, source)
            except DetflowInputError as exc:
                errors.append(exc)
            out["noise"] = {"layers": layers, "seed": noise["SEED"], "precision": raw.get("NOISE_PRECISION", 32)}
            if noise.get("OUT"):
                p = _path(errors, source, "NOISE.OUT", noise["OUT"])
                if p is not None:
                    out["noise"]["out"] = str(resolve_path(base, p))
    elif "NOISE_PRECISION" in raw:
        errors.append(DetflowInputError(source, "NOISE_PRECISION", "a NOISE block to go with it", "no NOISE block"))
    out["fits_out"] = _flag(errors, source, "FITSOUT", raw.get("FITSOUT"), False)
    if errors:
        raise DetflowInputError.combine(errors)
    return out | {
        "pipeline": "roman_wfi",
        "input": [str(resolve_path(base, v)) for v in inp] if isinstance(inp, list) else str(resolve_path(base, inp)),
        "output": str(resolve_path(base, out_path)),
        "caldir": {k: str(v) for k, v in caldir.items()},
        "exclude_first": exclude_first,
        "recipe": "full",
        "steps": steps,
        "not_applied": not_applied,
    }
