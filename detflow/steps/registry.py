"""The step registry: every step is a pure ``Dataset -> Dataset`` function with typed parameters.

A step never computes, writes or opens files. It receives the dataset, the reference products and
its validated parameters, and returns a new dataset whose ``attrs["steps"]`` and
``attrs["history"]`` record what it did (COMPLETE or SKIPPED, with the parameters).

Each step declares its operation: it **maps** (frame by frame: each output frame depends on its input
frame only, so consecutive map steps may run fused, one task per block of frames) or it **reduces** an
axis (``reduces="frame"``: combines, per-pixel model fits over frames), reading its inputs tile by tile
with that axis whole. A step that declares nothing maps.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pydantic
import xarray as xr

from ..schema import sanitize_attrs


class StepParams(pydantic.BaseModel):
    """Base of every step's parameters: unknown keys are errors."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Step:
    name: str
    func: Callable[..., xr.Dataset]
    params: type[StepParams]
    family: str
    summary: str
    reduces: str | None = None  # the axis the step reduces (``frame``); None: it maps frame by frame

    @property
    def kind(self) -> str:
        """``map`` or ``reduce``."""
        return "map" if self.reduces is None else "reduce"

    def __call__(self, ds: xr.Dataset, refs: xr.Dataset | Mapping[str, xr.Dataset] | None = None,
                 params=None) -> xr.Dataset:  # fmt: skip
        """``ds`` through the step; ``refs``: the reference products (a dataset, or for the model builders
        the models built before, by name); ``params``: a params instance, a dict of them, or None."""
        if params is None:
            params = self.params()
        elif isinstance(params, dict):
            params = self.params(**params)
        return self.func(ds, refs, params)


REGISTRY: dict[str, Step] = {}
# runs of consecutive steps that have a one-pass implementation with the same numerics and records
FUSIONS: dict[tuple[str, ...], Callable[..., xr.Dataset]] = {}


def register(name: str, params: type[StepParams], family: str, reduces: str | None = None):
    """Decorator adding a step function to the registry under ``name``; ``reduces``: the axis it reduces
    (``"frame"`` for a combine or a fit over frames), None for a step that maps frame by frame."""

    def deco(func):
        if name in REGISTRY:
            raise ValueError(f"step {name!r} registered twice")
        summary = (func.__doc__ or "").strip().splitlines()[0] if func.__doc__ else ""
        REGISTRY[name] = Step(name, func, params, family, summary, reduces)
        return func

    return deco


def register_fusion(names: tuple[str, ...]):
    """Decorator: ``func(ds, refs, *params)`` computes the steps ``names`` in one pass."""

    def deco(func):
        FUSIONS[tuple(names)] = func
        return func

    return deco


def apply_recipe(ds: xr.Dataset, refs, recipe: list[str], params: dict[str, dict], fuse: bool = True) -> xr.Dataset:
    """Apply the steps of ``recipe`` in order, using a registered fusion wherever one matches (the step
    modules named must have been imported: :mod:`detflow.steps.catalog` imports them all)."""
    i = 0
    while i < len(recipe):
        for names, func in FUSIONS.items() if fuse else ():
            if tuple(recipe[i : i + len(names)]) == names:
                ds = func(ds, refs, *(get_step(n).params(**params.get(n, {})) for n in names))
                i += len(names)
                break
        else:
            ds = get_step(recipe[i])(ds, refs, params.get(recipe[i], {}))
            i += 1
    return ds


def get_step(name: str) -> Step:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown step {name!r}; known steps: {', '.join(sorted(REGISTRY))}") from None


def record(ds: xr.Dataset, name: str, status: str, params: StepParams | None, note: str = "") -> xr.Dataset:
    """Return ``ds`` with one more step record and one more history line."""
    out = ds.copy()
    steps = list(out.attrs.get("steps", []))
    steps.append(sanitize_attrs({"name": name, "status": status,
                                 "params": params.model_dump() if params is not None else {}}))  # fmt: skip
    history = list(out.attrs.get("history", []))
    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    history.append(f"{when} {name}: {status}{' - ' + note if note else ''}")
    out.attrs["steps"] = steps
    out.attrs["history"] = history
    return out
