"""Roman Coronagraph EXCAM (EMCCD) steps: L1 counts -> L2a (DN) -> L2b (detected electrons).

Dataset in: :func:`detflow.io.excam_l1.open_excam_l1` (``data`` (frame, read, y, x) uint16, full frame,
``em_gain``/``exptime`` frame coordinates). Between steps, one chunk holds a few whole frames: ``data``
and ``err`` (frame, y, x) float64, ``dq`` (frame, y, x) uint32 (our DQ schema), ``bias`` (frame, y)
and ``rejected`` (frame,) uint8 (why a frame is left out of the data-set products, :data:`REJECT`).
``refs`` is :func:`detflow.io.excam_cal.open_excam_references`; a step whose calibration is not given
records SKIPPED.

The numerics are corgidrp's (5.1.1) step by step, with the corrections named where they occur; the
L2a/L2b products (:func:`l2a_product`, :func:`l2b_product`) are float32 on the image area.

One module per operation, re-exported here (``from detflow.steps.excam import combine``): :mod:`.common`
(recipes, :data:`REJECT`, the block helpers), :mod:`.headers` (the header keywords the steps read), the
L1 -> L2a steps :mod:`.bias`, :mod:`.cosmics`, :mod:`.nonlin`, the L2a -> L2b steps :mod:`.frame_select`,
:mod:`.electrons`, :mod:`.dark` (with the noise maps fitted from darks), :mod:`.desmear`, :mod:`.flat`
(flat and bad pixels), then :mod:`.products` (L2a/L2b) and :mod:`.combines` (mean/median, photon counting).
"""

from __future__ import annotations

# isort: off
# the step modules in the order of their steps: importing them registers the steps, in this order
from .bias import BiasParams, excam_bias
from .cosmics import CosmicsParams, excam_cosmics, histogram_threshold, iwa_circles, median_filter_cosmics
from .nonlin import NonlinParams, excam_nonlin
from .frame_select import FrameSelectParams, excam_frame_select
from .electrons import ElectronsParams, excam_electrons
from .dark import DarkParams, excam_dark, noise_maps, prescan_product, prescan_sums
from .desmear import DesmearParams, excam_desmear
from .flat import BadpixParams, FlatParams, excam_badpix, excam_flat

# isort: on
from .combines import combine, photon_count
from .common import FAMILY, L2A_RECIPE, L2B_RECIPE, REJECT
from .headers import HEADER_KEYS, header_cards, header_keys, header_values
from .products import l2a_product, l2b_product, to_image_area

__all__ = [
    "FAMILY", "L2A_RECIPE", "L2B_RECIPE", "REJECT", "HEADER_KEYS",
    "BiasParams", "CosmicsParams", "NonlinParams", "FrameSelectParams", "ElectronsParams", "DarkParams",
    "DesmearParams", "FlatParams", "BadpixParams",
    "excam_bias", "excam_cosmics", "excam_nonlin", "excam_frame_select", "excam_electrons", "excam_dark",
    "excam_desmear", "excam_flat", "excam_badpix",
    "histogram_threshold", "median_filter_cosmics", "iwa_circles", "header_keys", "header_cards", "header_values",
    "to_image_area", "l2a_product", "l2b_product", "prescan_product", "prescan_sums",
    "combine", "photon_count", "noise_maps",
]  # fmt: skip
