"""The instruments the engine knows, by their ``pipeline`` name. Adding a detector adds its line here (and
its two modules beside this one): no engine file changes."""

from __future__ import annotations

from . import cmos_job, roman_excam_job, roman_wfi_job
from .base import Instrument

INSTRUMENTS: dict[str, Instrument] = {m.INSTRUMENT.name: m.INSTRUMENT for m in (roman_wfi_job, roman_excam_job,
                                                                                 cmos_job)}  # fmt: skip
