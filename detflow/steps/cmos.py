"""CMOS characterisation steps (``pipeline: cmos``): the bias, dark and flat model builders and their
evaluation on held-out frames, each a step that reduces ``frame`` (a per-pixel fit over the frames).

``ds``: the frames of one section store (:func:`detflow.io.cmos_raw.open_cmos_section`: ``data`` (frame, y,
x) in DN, frame coordinates ``temp``, ``exptime``, ``caltype``, ``filter``, ``path``). ``refs``: the models
built (or read) before, by name (``{"bias": ..., "dark": ...}``): the dark model subtracts the bias, the flat
model the bias and the dark rates, an evaluation reads its model and what that model needs. The numerics are
:mod:`detflow.calib.cmos` (never computed here: the builders are lazy); the parameters are declared once,
here: the CMOS job's ``bias``, ``dark`` and ``flat`` blocks are these classes, ``steps.<name>`` sets them too.

The synthetic frames (the job's ``synthesize`` block) are no step: they evaluate the models on a grid of
temperatures and exposure times and read no frames.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import xarray as xr
from pydantic import Field

from ..calib.cmos import build_bias_model, build_dark_model, build_flat_model, evaluate_model
from ..schema import FRAME
from .registry import StepParams, record, register

FAMILY = "cmos"
Method = Literal["median", "mean", "sigma_clip"]
BiasMode = Literal["master", "model"]
METHOD_HELP = "combine of each group's frames: median, mean, or mean after a sigma clip along the frames"


class BiasModelParams(StepParams):
    method: Method = Field("median", description=METHOD_HELP)
    sigma: float = Field(3.0, gt=0, description="clip threshold of method sigma_clip (sigma)")
    temp_step: float = Field(0.1, gt=0, description="temperature grouping of the masters (deg C)")
    weights: Literal["none", "nframes"] = Field("none", description="fit weights of the masters: none, or their "
                                                "number of frames")  # fmt: skip
    hot_k: float | None = Field(None, gt=0, description="hot-pixel mask: master > median + k sigma")


class DarkModelParams(StepParams):
    bias_mode: BiasMode = Field("master", description="subtract the nearest-temperature bias master, or the bias "
                                "model at the frame's temperature")  # fmt: skip
    method: Method = Field("mean", description=METHOD_HELP)
    zero_frac_max: float = Field(0.1, ge=0, le=1, description="frames with more exact-zero pixels are rejected")
    hot_k: float = Field(5.0, gt=0, description="hot pixels: rate > mean + k sigma")
    weights: Literal["noise_model", "scatter", "none"] = Field("noise_model", description="fit weights: a per-pixel "
                                                               "noise model, the group scatter, or none")  # fmt: skip


class FlatModelParams(StepParams):
    bias_mode: BiasMode = Field("master", description="subtract the nearest bias master, or the bias model")
    method: Method = Field("median", description=METHOD_HELP)
    normalize: Literal["mean", "max"] = Field("mean", description="per-frame normalisation")
    vignetting: Literal["radial", "empirical", "none"] = Field("radial", description="vignetting model per filter")
    radial_order: int = Field(2, ge=1, description="order of the radial vignetting polynomial in r^2")
    max_dtemp: float = Field(5.0, gt=0, description="pair a flat with a dark at most this far in temperature (C)")
    max_dexptime: float = Field(10.0, gt=0, description="... and in exposure time (s)")


class BiasEvalParams(StepParams):
    pass


class DarkEvalParams(StepParams):
    bias_mode: BiasMode = Field("model", description="bias subtracted from the held-out frames (model: they fall "
                                "between the masters' temperatures)")  # fmt: skip
    dark_kind: Literal["2d", "1d"] = Field("2d", description="the dark model evaluated: A t^gamma exp(B (T - Tmin)) "
                                           "(2d) or one per exposure time (1d)")  # fmt: skip


class FlatEvalParams(StepParams):
    bias_mode: BiasMode = Field("model", description="bias subtracted from the held-out frames")


def _model(refs: Mapping[str, xr.Dataset] | None, name: str, step: str) -> xr.Dataset:
    if refs is None or name not in refs:
        raise ValueError(f"{step}: the {name} model in refs, got {sorted(refs or {})}")
    return refs[name]


@register("bias_model", BiasModelParams, FAMILY, reduces=FRAME)
def bias_model(ds: xr.Dataset, refs: Mapping[str, xr.Dataset] | None, p: BiasModelParams) -> xr.Dataset:
    """Bias masters per temperature and the per-pixel fit a + b T over them."""
    return record(build_bias_model(ds, **p.model_dump()), "bias_model", "COMPLETE", p)


@register("dark_model", DarkModelParams, FAMILY, reduces=FRAME)
def dark_model(ds: xr.Dataset, refs: Mapping[str, xr.Dataset] | None, p: DarkModelParams) -> xr.Dataset:
    """Dark-current rates per (T, t) group, hot pixels, per-pixel A t^gamma exp(B (T - Tmin)) fits."""
    out = build_dark_model(ds, _model(refs, "bias", "dark_model"), **p.model_dump())
    return record(out, "dark_model", "COMPLETE", p)


@register("flat_model", FlatModelParams, FAMILY, reduces=FRAME)
def flat_model(ds: xr.Dataset, refs: Mapping[str, xr.Dataset] | None, p: FlatModelParams) -> xr.Dataset:
    """Master flats per (filter, T, t), vignetting, per-pixel A + B (T - Tref) + C (t - tref) fits."""
    kw = p.model_dump()
    kw["vignetting"] = None if p.vignetting == "none" else p.vignetting
    out = build_flat_model(ds, _model(refs, "dark", "flat_model"), _model(refs, "bias", "flat_model"), **kw)
    return record(out, "flat_model", "COMPLETE", p)


@register("bias_eval", BiasEvalParams, FAMILY, reduces=FRAME)
def bias_eval(ds: xr.Dataset, refs: Mapping[str, xr.Dataset] | None, p: BiasEvalParams) -> xr.Dataset:
    """The bias model against held-out frames: MAE, MAPE maps, per-frame and per-group errors."""
    return record(evaluate_model(_model(refs, "bias", "bias_eval"), ds), "bias_eval", "COMPLETE", p)


@register("dark_eval", DarkEvalParams, FAMILY, reduces=FRAME)
def dark_eval(ds: xr.Dataset, refs: Mapping[str, xr.Dataset] | None, p: DarkEvalParams) -> xr.Dataset:
    """The dark model against held-out frames (bias subtracted): MAE, MAPE, per-frame and per-group errors."""
    out = evaluate_model(_model(refs, "dark", "dark_eval"), ds, bias=_model(refs, "bias", "dark_eval"),
                         bias_mode=p.bias_mode, dark_kind=p.dark_kind)  # fmt: skip
    return record(out, "dark_eval", "COMPLETE", p)


@register("flat_eval", FlatEvalParams, FAMILY, reduces=FRAME)
def flat_eval(ds: xr.Dataset, refs: Mapping[str, xr.Dataset] | None, p: FlatEvalParams) -> xr.Dataset:
    """The flat model against held-out flats reduced as the builder does: MAE, MAPE, per-frame/group errors."""
    out = evaluate_model(_model(refs, "flat", "flat_eval"), ds, bias=_model(refs, "bias", "flat_eval"),
                         dark=_model(refs, "dark", "flat_eval"), bias_mode=p.bias_mode)  # fmt: skip
    return record(out, "flat_eval", "COMPLETE", p)
