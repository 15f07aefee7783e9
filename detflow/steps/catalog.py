"""Every family's steps, registered: importing this module imports each step module (whose ``@register``
decorators fill :data:`detflow.steps.registry.REGISTRY`). The registry itself imports no step module, so a
step module and the registry never import each other."""

from __future__ import annotations

from . import ccd, cmos, excam, hxrg_ground, hxrg_reduce, hxrg_refpix, hxrg_sky, wfi  # noqa: F401  (every family's steps)
from .registry import REGISTRY, Step, get_step

__all__ = ["all_steps", "families", "family_steps", "get_step"]


def all_steps() -> dict[str, Step]:
    return dict(REGISTRY)


def family_steps(family: str) -> dict[str, Step]:
    """The steps of one family (``roman_wfi``, ``roman_excam``, ``ccd``, ``cmos``...)."""
    return {k: v for k, v in REGISTRY.items() if v.family == family}


def families() -> list[str]:
    """The step families, in registration order."""
    return list(dict.fromkeys(s.family for s in REGISTRY.values()))
