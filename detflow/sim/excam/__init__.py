"""Roman Coronagraph EXCAM (EMCCD, e2v CCD201-20) L1 frame simulator with known truth.

``simulate_excam(outdir, ExcamSimConfig(...))`` writes EXCAM-like L1 FITS frames, the calibration
files an L1 -> L2b run needs (the II&T ``config_file.yaml`` format) and a ``truth.npz``, all derived
from one seeded truth. Frames always have the full size of the geometry preset
(:data:`detflow.instruments.roman_excam.GEOMETRIES`; SCI: 1200 x 2200, image area 1024 x 1024 at
row 13, column 1088); maps are on the preset's image area.

Output layout (``outdir``)::

    l1/<name>_L1_0000.fits ...           one frame per file: primary HDU + ImageHDU "SCI" (uint16)
    calib/dark_current_map.fits          e-/s (float64, image area)
    calib/fixed_pattern_noise.fits       e- at the output of the gain register (F)
    calib/clock_induced_charge.fits      e- per frame
    calib/flat.fits                      relative response, mean 1 over the good pixels
    calib/badpix.fits                    uint8, 1 = bad (hot or low-QE)
    calib/<nonlinearity table>.csv       the table given (copied), or a unity table
    truth.npz
    config_file.yaml                     II&T format, paths relative to ``outdir``

(``write_calibs=False`` writes only ``l1/`` and ``truth.npz``.) Nothing is ever overwritten: if
``outdir/l1`` holds any file, or any other output exists, :class:`detflow.errors.OutputExistsError`
is raised before any work; files are written under a temporary name and renamed, and a simulation that
fails part-way removes what it wrote (complete or absent).

Physics of one frame (image area, electrons unless stated)
----------------------------------------------------------
1. Mean charge ``lam = S(flat * flux * t) + D t + C``: ``S`` is the shutterless-readout smear
   (:func:`apply_smear`, along columns, readout order = increasing row, ``a = ROW_READ_TIME / t``):
   ``S(x)[r] = x[r] + a * sum_{s <= r} x[s]``, the forward map that
   :func:`detflow.kernels.emccd.desmear` inverts exactly. Only the light is smeared: dark current and
   CIC are what a dark calibration measures, and the pipeline subtracts the dark before it desmears
   (corgidrp's ``l2a_to_l2b`` order: dark_subtraction, desmear, flat_division).
2. ``n = Poisson(lam)``; cosmic rays (Poisson number per frame, mean ``cosmic_rate``, by default
   5e4 hits/m^2/s over the image area: ~44 in 5 s on 1024 x 1024 pixels; a short track of
   1-4 pixels, lognormal total charge of median ``cr_charge_e``, 60% in the head pixel) are added to
   ``n`` (they are not smeared: they arrive at one instant); ``n`` is clipped at ``fwc_pp_e``.
3. Gain register: ``Gamma(shape=n, scale=g)`` for ``n > 0`` (the Erlang model of emccd_detect's fast
   mode; ENF^2 = 2), ``n`` unchanged at ``g = 1``. Then, in serial readout order over the whole frame
   (row-major: prescan columns first, a row's end continues into the next row's prescan), charge
   above ``fwc_em_e`` spills into the following pixels (the saturated plateau), and each saturated
   run leaves a trap tail ``T (1 - q) q^(k-1)``, ``q = exp(-1/efold)``, ``T = cr_tail_frac * fwc_em_e``
   (``efold = clip(4 g / 1000, 0.5, 4)`` pixels unless given: ~2-5 pixels at g = 100, ~30-40 at
   g >= 1000), capped at ``fwc_em_e``.
4. Fixed-pattern noise ``F`` (image area, e- at the output) and Gaussian read noise ``read_noise_e``
   (every pixel of the frame) are added; ``/ eperdn`` gives linear DN.
5. Nonlinearity (if a table is given): raw = the solution of ``raw * relgain(raw, g) = linear``
   (:func:`inverse_nonlinearity`, exact per table segment), so the L2a correction (bias-subtracted DN
   times :func:`detflow.kernels.emccd.relative_gain`) recovers the linear DN.
6. Bias: ``bias_dn`` + a fixed row pattern (``row_bias_rms_dn``) + a per-frame offset
   (``bias_frame_rms_dn``) + per-frame row jitter (``row_bias_frame_rms_dn``), the same in the prescan
   and the image; rounded, clipped to 0..65535, uint16. Non-image pixels get no charge (bias + read
   noise + any serial spill/tail).

So the mean over frames of ``(L1 - row bias) * eperdn / g`` on the image area is
``S(flat flux t) + D t + C + F / g`` (truth ``expected_frame_e``), with per-frame variance
``ENF^2 lam + (read_noise_e / g)^2`` (no cosmic rays, no saturation, linear table).

``truth.npz`` (float64 image-area maps unless stated)
-----------------------------------------------------
``flux`` (e-/s), ``flat``, ``dark_current`` (e-/s), ``cic`` (e-), ``fpn`` (e-), ``badpix`` (uint8),
``hot``, ``low_qe`` (bool); ``expected_l2b_e`` = ``flux * exptime * flat`` (the dark-subtracted,
desmeared electrons, before flat division), ``expected_flat_corrected_e`` = ``flux * exptime``,
``expected_dark_e`` = ``F / g + D t + C`` (the master dark), ``expected_frame_e`` (above),
``mean_charge_e`` (``lam``, pre-gain); ``cosmic_mask`` (n_frames, rows, cols) bool: cosmic-ray
pixels, their spill plateau and tail pixels receiving at least ``max(read_noise_e, eperdn)`` e-;
``row_bias_dn`` (n_frames, frame_rows); 1-D over all hits: ``cr_frame``, ``cr_row``, ``cr_col``
(full-frame head pixel), ``cr_charge_e``; ``nonlin_table`` (the table used, or a 0-size array);
scalars ``exptime``, ``em_gain``, ``eperdn``, ``read_noise_e``, ``smear_a``, ``cr_tail_efold``,
``seed``, ``n_frames``, ``image_row0``, ``image_col0``, ``geometry`` (str), ``config_json`` (str).

Random numbers: truth maps from ``SeedSequence(seed, spawn_key=(0,))``, frame ``k`` from
``SeedSequence(seed, spawn_key=(1, k))``: frame ``k`` is the same whatever ``n_frames``.

The package, one module per concern, re-exports the public names (``from detflow.sim.excam import
simulate_excam``): :mod:`.config` (:class:`ExcamSimConfig`, :class:`SimResult`), :mod:`.emccd_model` (smear,
nonlinearity, gain register), :mod:`.truth` (scene and calibration truth), :mod:`.frame` (one L1 frame),
:mod:`.fits_files` (L1 headers, FITS frames and maps), :mod:`.iit` (the II&T calibration files and
``config_file.yaml``) and :mod:`.simulate` (:func:`simulate_excam`: the run and its files).
"""

from __future__ import annotations

from .config import CR_HIT_RATE as CR_HIT_RATE
from .config import PIXEL_AREA as PIXEL_AREA
from .config import ExcamSimConfig, SimResult
from .emccd_model import apply_smear, em_gain_register, inverse_nonlinearity
from .iit import CALIB_FILES
from .simulate import simulate_excam
from .truth import default_scene

__all__ = [
    "CALIB_FILES",
    "ExcamSimConfig",
    "SimResult",
    "apply_smear",
    "default_scene",
    "em_gain_register",
    "inverse_nonlinearity",
    "simulate_excam",
]  # fmt: skip
