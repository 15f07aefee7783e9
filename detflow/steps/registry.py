"""The step registry: every step is a pure ``Dataset -> Dataset`` function with typed parameters.

A step never computes, writes or opens files. It receives the dataset, the reference products and
its validated parameters, and returns a new dataset whose ``attrs["steps"]`` and
``attrs["history"]`` record what it did (COMPLETE or SKIPPED, with the parameters).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable

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

    def __call__(self, ds: xr.Dataset, refs: xr.Dataset | None = None, params=None) -> xr.Dataset:
        if params is None:
            params = self.params()
        elif isinstance(params, dict):
            params = self.params(**params)
        return self.func(ds, refs, params)


REGISTRY: dict[str, Step] = {}


def register(name: str, params: type[StepParams], family: str):
    """Decorator adding a step function to the registry under ``name``."""

    def deco(func):
        if name in REGISTRY:
            raise ValueError(f"step {name!r} registered twice")
        summary = (func.__doc__ or "").strip().splitlines()[0] if func.__doc__ else ""
        REGISTRY[name] = Step(name, func, params, family, summary)
        return func

    return deco


def get_step(name: str) -> Step:
    _load_all()
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown step {name!r}; known steps: {', '.join(sorted(REGISTRY))}") from None


def all_steps() -> dict[str, Step]:
    _load_all()
    return dict(REGISTRY)


def _load_all() -> None:
    from . import wfi  # noqa: F401  (registers the WFI steps)


def record(ds: xr.Dataset, name: str, status: str, params: StepParams | None, note: str = "") -> xr.Dataset:
    """Return ``ds`` with one more step record and one more history line."""
    out = ds.copy()
    steps = list(out.attrs.get("steps", []))
    steps.append(sanitize_attrs({"name": name, "status": status,
                                 "params": params.model_dump() if params is not None else {}}))  # fmt: skip
    history = list(out.attrs.get("history", []))
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    history.append(f"{when} {name}: {status}{' - ' + note if note else ''}")
    out.attrs["steps"] = steps
    out.attrs["history"] = history
    return out
