"""Roman Wide Field Instrument HxRG (H4RG-10) geometry, reference-file names and default recipe.

Geometry is data: the full frame is ``nside x nside`` (4096 in flight, smaller in tests), a border of
``NBORDER`` reference pixels on every side, ``NCHANNEL`` output channels of ``nside // NCHANNEL``
columns, and the amp33 reference output with one channel's width. Other HxRG ramps (a generic FITS
cube, a subarray) run through the same steps with their own border: :func:`border_of` an L1 dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

NSIDE = 4096
NBORDER = 4
NCHANNEL = 32
# (0.11 arcsec)^2 in steradians: the reference pixel solid angle of the flat's area correction
OMEGA_IDEAL = 2.8440360952308436e-13

# the CALDIR entries the PIT gen_cal_image knows; the first group is required by the WFI recipe
CALDIR_REQUIRED = ("dark", "gain", "linearitylegendre", "mask", "read", "saturation")
CALDIR_OPTIONAL = ("flat", "ipc4d", "biascorr", "dark_decay")
# optional reference file -> the step that uses it (opened only when the recipe has that step)
CALDIR_STEP = {"ipc4d": "ipc", "flat": "flat", "biascorr": "bias_correction"}

DEFAULT_RECIPE = ("dq_init", "saturation", "linearity", "dark_current", "ramp_fit")
# every step of gen_cal_image in its order; a PIT configuration runs this (without the steps whose
# optional reference file it does not name), a detflow job asks for it with `recipe: full`
PIT_RECIPE = ("dq_init", "saturation", "refpix", "bias_correction", "linearity", "ipc", "dark_current", "ramp_fit",
              "flat", "sky")  # fmt: skip


def full_recipe(caldir) -> list[str]:
    """:data:`PIT_RECIPE` without the steps whose optional reference file ``caldir`` lacks."""
    needs = {step: entry for entry, step in CALDIR_STEP.items()}
    return [s for s in PIT_RECIPE if s not in needs or needs[s] in caldir]


@dataclass(frozen=True)
class Geometry:
    nside: int = NSIDE
    nborder: int = NBORDER
    nchannel: int = NCHANNEL

    @property
    def nactive(self) -> int:
        return self.nside - 2 * self.nborder

    @property
    def channel_width(self) -> int:
        return self.nside // self.nchannel

    @property
    def active(self) -> tuple[slice, slice]:
        nb = self.nborder
        return slice(nb, self.nside - nb), slice(nb, self.nside - nb)

    @classmethod
    def for_shape(cls, ny: int, nx: int, nborder: int = NBORDER) -> "Geometry":
        if ny != nx:
            raise ValueError(f"WFI frames are square, got {ny}x{nx}")
        return cls(nside=ny, nborder=nborder)


def border_of(attrs: dict) -> int:
    """The reference-pixel border of an L1 dataset (its ``nborder`` attribute; Roman's 4 without one)."""
    return int(attrs.get("nborder", NBORDER))
