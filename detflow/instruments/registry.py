"""The instruments the engine knows, by their ``pipeline`` name: each module listed here holds an
``INSTRUMENT`` record (``<name>_plan.py``: the job model, its foreign spellings and the plan the executor
runs). Adding a detector adds its modules beside this one and its name here: no engine file changes."""

from __future__ import annotations

from . import ccd_plan, cmos_plan, hxrg_ground_plan, mkid_plan, roman_excam_plan, roman_wfi_plan
from .base import Instrument

INSTRUMENTS: dict[str, Instrument] = {m.INSTRUMENT.name: m.INSTRUMENT for m in (roman_wfi_plan, roman_excam_plan,
                                                                                 cmos_plan, ccd_plan,
                                                                                 hxrg_ground_plan, mkid_plan)}  # fmt: skip
