"""Roman WFI up-the-ramp steps, L1 resultants to L2 slopes (the PIT ``gen_cal_image`` slice).

Dataset in: the L1 dataset of :func:`detflow.io.open_l1` (``data`` (frame, read, y, x) raw DN).
Between steps: ``data`` float32, ``groupdq`` (frame, read, y, x) and ``pixeldq`` (frame, y, x) uint32,
and the resultant times ``tbar``/``tau`` as (frame, read) coordinates. ``refs`` is the dataset of
:func:`detflow.io.caldir.open_wfi_references`. The last step, :func:`ramp_fit`, returns the L2 dataset.

The steps live in modules by operation: :mod:`.dq` (``dq_init``, ``saturation``), :mod:`.reference`
(``refpix``, ``bias_correction``), :mod:`.nonlinearity` (``linearity``), :mod:`.ipc_dark` (``ipc``,
``dark_current``), :mod:`.ramp` (``ramp_fit``), :mod:`.flatfield` (``flat``), :mod:`.sky_mask` (``sky``,
``grown_mask``); the one-pass linearity + dark + ramp fit in :mod:`.fused`, the L2 product in :mod:`.l2`,
helpers they share in :mod:`.common`. This package re-exports their names (``from detflow.steps.wfi import
ramp_fit``); no module is named like a step, so ``detflow.steps.wfi.ramp_fit`` is the step function.
"""

# isort: off
# pipeline order: the order the steps register in, which `detflow steps` lists
from .common import FAMILY
from .dq import DQInitParams, SaturationParams, dq_init, saturation, saturation_frame_params
from .reference import BiasCorrParams, RefPixParams, bias_correction, pink_model_slope, refpix
from .nonlinearity import LinearityParams, linearity
from .ipc_dark import DarkParams, IPCParams, dark_current, ipc, ipc_deconvolve, ipc_gain
from .ramp import RampFitParams, ramp_fit, ramp_note, ramp_tables_for
from .flatfield import FlatParams, flat, flat_map
from .sky_mask import SkyParams, grown_mask, sky
from .fused import linearity_dark_ramp
from .l2 import l2_product
# isort: on

__all__ = [
    "FAMILY",
    "DQInitParams", "dq_init", "SaturationParams", "saturation", "saturation_frame_params",
    "BiasCorrParams", "RefPixParams", "bias_correction", "pink_model_slope", "refpix",
    "LinearityParams", "linearity",
    "IPCParams", "ipc", "ipc_deconvolve", "ipc_gain", "DarkParams", "dark_current",
    "RampFitParams", "ramp_fit", "ramp_note", "ramp_tables_for",
    "FlatParams", "flat", "flat_map",
    "SkyParams", "grown_mask", "sky",
    "linearity_dark_ramp",
    "l2_product",
]  # fmt: skip
