"""Roman datamodels for the ASDF files detflow writes: tagged trees that roman_datamodels and romancal open.

The L2 export is an ``ImageModel`` (``wfi_image`` schema), the simulator's L1 a ``ScienceRawModel``
(``wfi_science_raw``) and its reference files ``DarkRefModel``, ``GainRefModel``... The schemas require
much metadata detflow does not know (observation, pointing, ephemeris...): those fields hold
roman_datamodels' placeholder values (``"?"``, ``-999999``), and every field that detflow's own metadata
(the L1 file's, or the simulator's) has with a matching type is filled from it. Fields a schema
refuses (an enum value it does not list, say) keep the placeholder. Content no schema describes goes
into the ``roman`` node beside the schema's fields (the schemas allow extra keys) or, as the PIT writes
its ``processinfo``, beside ``roman`` at the top of the tree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asdf
import numpy as np
import roman_datamodels.datamodels as rdm
from asdf.exceptions import ValidationError
from asdf.schema import load_schema
from astropy import coordinates, units
from astropy.time import Time
from astropy.wcs import WCS
from gwcs import WCS as GWCS
from gwcs import coordinate_frames as cf
from gwcs.utils import make_fitswcs_transform

from .store.atomic import atomic_write

# detflow step -> the romancal step name of ``meta.cal_step`` (steps without one are recorded in processinfo)
CAL_STEP_NAMES = {"dq_init": "dq_init", "saturation": "saturation", "refpix": "refpix", "linearity": "linearity",
                  "dark_current": "dark", "ramp_fit": "ramp_fit", "flat": "flat_field"}  # fmt: skip
_CAL_STEP_FLAGS = ("INCOMPLETE", "N/A", "COMPLETE", "FAILED", "SKIPPED")
_MISSING = object()


def _convert(current: Any, value: Any) -> Any:
    """``value`` in the type of the placeholder ``current``, or ``_MISSING`` when they do not match."""
    if isinstance(current, Time):
        try:
            return value if isinstance(value, Time) else Time(value)
        except (TypeError, ValueError):
            return _MISSING
    if isinstance(current, (bool, np.bool_)):
        return bool(value) if isinstance(value, (bool, np.bool_)) else _MISSING
    if isinstance(value, (bool, np.bool_)):
        return _MISSING
    if isinstance(current, (int, np.integer)):
        ok = isinstance(value, (int, np.integer)) or (isinstance(value, float) and float(value).is_integer())
        return int(value) if ok else _MISSING
    if isinstance(current, (float, np.floating)):
        return float(value) if isinstance(value, (int, float, np.number)) else _MISSING
    if isinstance(current, str):
        return value if isinstance(value, str) else _MISSING
    if isinstance(value, (list, tuple)) and not hasattr(current, "keys"):
        return [list(v) if isinstance(v, (list, tuple)) else v for v in value]
    return _MISSING


def _fill(node: Any, values: dict) -> None:
    """Copy ``values`` (a plain tree) onto ``node``: fields that exist in both in the placeholder's type
    (skipped when the types do not match), new keys as they are."""
    for key, value in values.items():
        if value is None:
            continue
        if key not in node:
            node[key] = value
            continue
        current = node[key]
        if hasattr(current, "keys"):
            if isinstance(value, dict):
                _fill(current, value)
            continue
        new = _convert(current, value)
        if new is not _MISSING:
            node[key] = new


def _validated(model: rdm.DataModel, defaults: rdm.DataModel, max_fixes: int = 50) -> rdm.DataModel:
    """Validate; a metadata field the schema refuses gets its placeholder back, or is removed when the
    placeholder model has none (then validate again)."""
    for _ in range(max_fixes):
        try:
            model.validate()
            return model
        except ValidationError as exc:
            path = [p for p in exc.path if isinstance(p, str)]
            if len(path) < 2 or path[0] != "meta":
                raise
            parent = model
            for key in path[:-1]:
                parent = parent[key]
            try:
                value = defaults
                for key in path:
                    value = value[key]
            except (KeyError, AttributeError, TypeError):
                del parent[path[-1]]
            else:
                parent[path[-1]] = value
    model.validate()
    return model


def _model(cls: type, arrays: dict[str, np.ndarray], meta: dict, extra: dict | None = None,
           **fields) -> rdm.DataModel:  # fmt: skip
    """``cls`` with placeholder metadata filled from ``meta``, then the metadata ``fields`` set, its arrays
    set and ``extra`` keys beside them; validated."""
    shape = (1,) * max(a.ndim for a in arrays.values())  # small placeholder arrays, replaced below
    model, defaults = cls.create_fake_data(shape=shape), cls.create_fake_data(shape=shape)
    _fill(model.meta, meta)
    for name, value in fields.items():
        model.meta[name] = value
    for name, arr in {**arrays, **(extra or {})}.items():
        model[name] = arr
    return _validated(model, defaults)


def write_model(path: str | Path, model: rdm.DataModel, extra: dict | None = None) -> Path:
    """Write ``{"roman": model, **extra}`` under a temporary name and rename it into place (complete or
    absent); ``meta.filename`` is the file's name."""
    path = Path(path)
    model.meta.filename = path.name
    return atomic_write(path, lambda tmp: asdf.AsdfFile({"roman": model._instance, **(extra or {})}).write_to(tmp))


def science_raw_model(data: np.ndarray, amp33: np.ndarray, meta: dict) -> rdm.ScienceRawModel:
    """An L1 ``ScienceRawModel``: ``data`` and ``amp33`` (resultant, y, x) uint16."""
    return _model(rdm.ScienceRawModel, {"data": np.asarray(data, np.uint16), "amp33": np.asarray(amp33, np.uint16)},
                  meta)  # fmt: skip


REFERENCE_MODELS = {"DARK": rdm.DarkRefModel, "GAIN": rdm.GainRefModel, "READNOISE": rdm.ReadnoiseRefModel,
                    "MASK": rdm.MaskRefModel, "SATURATION": rdm.SaturationRefModel, "FLAT": rdm.FlatRefModel}  # fmt: skip


def reference_model(meta: dict, arrays: dict[str, np.ndarray], extra: dict | None = None) -> rdm.DataModel:
    """A reference file model of ``meta["reftype"]`` (one of :data:`REFERENCE_MODELS`)."""
    return _model(REFERENCE_MODELS[meta["reftype"]], arrays, meta, extra)


def image_model(arrays: dict[str, np.ndarray], l1_meta: dict, meta: dict, cal_step: dict[str, str],
                wcs=None, extra: dict | None = None) -> rdm.ImageModel:  # fmt: skip
    """An L2 ``ImageModel``: ``arrays`` in the schema's types (the variances and ``err`` are float16
    there), metadata from the L1 file's ``l1_meta``, then ``meta``; ``cal_step`` maps detflow step
    names to their status; ``wcs`` a gwcs or None."""
    steps = dict.fromkeys(_cal_step_names(), "INCOMPLETE")
    for name, status in cal_step.items():
        if name in CAL_STEP_NAMES:
            steps[CAL_STEP_NAMES[name]] = status if status in _CAL_STEP_FLAGS else "INCOMPLETE"
    if wcs is not None:
        steps["assign_wcs"] = "COMPLETE"  # the job's WCS, moved onto the L2 pixels
    return _model(rdm.ImageModel, arrays, {**l1_meta, **meta}, extra, cal_step=steps, wcs=wcs)


def _cal_step_names() -> list[str]:
    """The step names of the ``l2_cal_step`` schema of the installed roman_datamodels."""
    uri = rdm.ImageModel.create_minimal().schema_uri
    meta = load_schema(uri, resolve_references=True)["properties"]["meta"]["allOf"][1]["properties"]
    return list(meta["cal_step"]["properties"])


def fits_to_gwcs(header):
    """A gwcs from a celestial FITS WCS without distortion (``None`` when it has SIP or lookup-table
    distortion, which gwcs' FITS reader leaves out); pixel inputs 0-based, as the FITS WCS's."""
    w = WCS(header)
    if w.sip is not None or w.cpdis1 is not None or w.cpdis2 is not None or w.det2im1 is not None:
        return None
    detector = cf.Frame2D(name="detector", axes_names=("x", "y"), unit=(units.pix, units.pix))
    sky = cf.CelestialFrame(reference_frame=coordinates.ICRS(), name="world", unit=(units.deg, units.deg))
    return GWCS([(detector, make_fitswcs_transform(w.to_header())), (sky, None)])
