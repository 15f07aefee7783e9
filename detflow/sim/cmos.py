"""CMOS characterisation raw tree (bias, darks, flats over temperatures and exposure times) with known truth.

``simulate_cmos_tree(outdir, CmosSimConfig(...))`` writes the tree a camera test campaign writes
(:mod:`detflow.instruments.cmos`, read by :mod:`detflow.io.cmos_raw`) and ``truth.npz``::

    TestSection1/T<temp>/attempt<k>/                                bias, ``n_bias`` frames each
    TestSection2/<n_dark>Frames/T<temp>/<t>s/attempt0/               darks
    TestSection3/ContinuousFrames/T<temp>/<t>s/attempt<e>/           flats (config FILTER), epoch e

Each attempt: a config file, ``temperatureLog.csv`` and ``frames/*.raw`` (little-endian uint16, or
uint8 at ``bit_depth <= 8``). The attempts vary in the ways discovery and parsing must absorb, by the
variant number ``k`` (the attempt's index in its section plus 0, 1, 2 for bias, dark, flat): config
``configFile.txt`` or ``config.txt`` (k % 3 == 2), ``key=value`` or ``key: value`` (k % 2) with ``#``
comments; the log delimiter ``,`` ``;`` tab, or ``;`` with decimal commas (k % 4); the temperature
column ``Temperature`` / ``CCDTemp`` / ``CCD_Temp`` / ``CCDTemperature`` / ``ChipTemp`` (k % 5); frame
files ``frame<N>.raw`` or ``f<N>_exp<t>s_T<temp>.raw`` (k % 3 == 1), the log of every other such attempt
lacking ExpTime/RealExpTime (the exposure then comes from the file name); frame numbers from 0 or 1 (k % 2).
With ``file_names="camera"`` every frame file is named as the camera software names them, set point,
exposure, attempt and frame number in one name (k % 3): ``BiasT0_exp0.012sAt0f1.raw``,
``Dark_T-10_exp_0.5s_At0_frame3.raw``, ``FlatT25.5C_exp100msAt1f002.raw``; the log of every other
attempt (k % 2 == 0) lacks ExpTime/RealExpTime.

Physics (ADC counts, "DN"; the stored integers are ``DN * data_scale``)
----------------------------------------------------------------------
Per frame at logged detector temperature ``T`` (deg C) and exposure ``t`` (s, the logged ExpTime):

- bias ``a + b T`` per pixel, Gaussian read noise ``read_noise``;
- dark ``D = A t^gamma exp(B (T - Tmin))`` with global ``A``, ``gamma``, ``B`` except for hot pixels
  (``hot_fraction``) with per-pixel ``A`` (``dark_A * U(hot_A_factor)``) and ``B`` (``U(hot_B)``);
- flats add ``L = flat_rate t V(r) (fA + fB (T - flat_tref) + fC (t - flat_texp_ref))``, ``V = 1 - v r^2 - w
  r^4`` (``r`` = distance from the centre / distance to a corner);
- flat degradation (off by default): ``flat_epochs`` repeats every flat attempt (``attempt<e>``, e = 0 ..
  flat_epochs - 1, ``e * flat_epoch_days`` added to the attempt's logged time stamps); from epoch ``first_epoch`` on each
  :class:`FlatDefect` removes ``depth(e) = depth + depth_growth (e - first_epoch)`` of the light ``L``
  in a disk of radius ``radius + radius_growth (e - first_epoch)`` pixels (pixel centres within it): a
  dust speck (no growth) or an outgassing-like patch (growing); ``L *= 1 - loss(e)``, ``loss`` combining
  the defects as ``1 - prod(1 - depth_d mask_d)``;
- charge ``(D + L) * gain`` (ExpGain) is Poisson in electrons (``egain`` e-/DN); then
  ``round``, clip to ``0 .. 2**adc_bits - 1``, times ``data_scale = 2**(bit_depth - adc_bits)`` when
  ``left_shift`` (12-bit values in 16 bits: multiples of 16), else 1.

``truth.npz`` and ``CmosSimResult.truth``: maps (float64, (height, width)) ``bias_a``, ``bias_b``,
``dark_A``, ``dark_B``, ``hot`` (bool), ``flat_A``, ``flat_B``, ``flat_C``, ``vignetting``; scalars
``dark_gamma``, ``dark_A_global``, ``dark_B_global``, ``Tmin``, ``flat_tref``, ``flat_texp_ref``,
``flat_rate``, ``read_noise``, ``egain``, ``gain``, ``data_scale``, ``adc_bits``, ``seed``; the flat
degradation: ``flat_loss`` (float64, (flat_epochs, height, width), the fraction of the light lost per
epoch, zeros without defects), ``flat_defects`` (float64, (n_defects, 7): y, x, radius, depth,
first_epoch, radius_growth, depth_growth) and ``flat_epoch_days``.

Random numbers: truth from ``SeedSequence(seed, spawn_key=(0,))``; an attempt's frames from a key of its
section, temperature, exposure and attempt number, so adding temperatures leaves the other attempts
unchanged. ``faults`` writes broken inputs (``bad_size``, ``no_frame_column``, ``missing_config``,
``missing_log_row``) for the error tests; ``CmosSimResult.faults`` says where.

Nothing is overwritten: existing section folders or ``truth.npz`` raise
:class:`~detflow.errors.OutputExistsError` before any work; the tree is written under a temporary
folder in ``outdir`` and moved into place when complete.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DetflowInputError, OutputExistsError
from ..instruments import cmos

__all__ = [
    "FAULTS",
    "FILE_NAMES",
    "CmosSimConfig",
    "CmosSimResult",
    "FlatDefect",
    "SimFrame",
    "expected_dn",
    "flat_loss",
    "simulate_cmos_tree",
    "vignetting",
]

FAULTS = ("bad_size", "no_frame_column", "missing_config", "missing_log_row")
FILE_NAMES = ("mixed", "camera")
SECTION_DIRS = {cal: sec for sec, cal in cmos.SECTIONS.items()}
_TEMP_COLUMNS = ("Temperature", "CCDTemp", "CCD_Temp", "CCDTemperature", "ChipTemp")
_DIALECTS = ((",", False), (";", False), ("\t", False), (";", True))  # (delimiter, decimal comma)
_T0 = _dt.datetime(2024, 3, 1, 8, 0, 0)


@dataclass(frozen=True)
class FlatDefect:
    """A loss of light in the flats from epoch ``first_epoch`` on: a disk about (``y``, ``x``) (pixels)
    of radius ``radius`` losing ``depth`` of the light, both growing linearly per epoch."""

    y: float
    x: float
    radius: float = 2.0
    depth: float = 0.2  # fraction of the light lost (0..1)
    first_epoch: int = 1
    radius_growth: float = 0.0  # pixels per epoch
    depth_growth: float = 0.0  # per epoch

    def __post_init__(self):
        if not (0 <= self.depth <= 1 and self.radius >= 0 and self.first_epoch >= 0):
            raise DetflowInputError(None, "flat_defects", "depth in 0..1, radius >= 0, first_epoch >= 0", self)


@dataclass(frozen=True)
class CmosSimConfig:
    """Sizes, layout and physics of a simulated CMOS raw tree (small defaults for tests)."""

    height: int = 64
    width: int = 64
    bit_depth: int = 16
    adc_bits: int | None = None  # default min(12, bit_depth)
    left_shift: bool = True  # store ADC counts * 2**(bit_depth - adc_bits)
    temps: tuple[float, ...] = (-10.0, 10.0, 25.0)
    bias_attempts: int = 2
    n_bias: int = 3
    bias_exptime: float = 1e-5  # s
    dark_exptimes: tuple[float, ...] = (0.5, 2.0)
    n_dark: int = 3
    flat_exptimes: tuple[float, ...] = (0.05, 0.1)
    n_flat: int = 2
    flat_filter: str = "g"  # FILTER of the flats' config ("" for none)
    gain: float = 1.0  # ExpGain
    egain: float = 1.0  # e- per DN (shot noise)
    bias_a: float = 100.0  # DN
    bias_a_rms: float = 5.0
    bias_b: float = 0.05  # DN / deg C
    bias_b_rms: float = 0.02
    read_noise: float = 2.0  # DN
    dark_A: float = 2.0  # DN / s**gamma at Tmin
    dark_gamma: float = 1.0
    dark_B: float = 0.07  # 1 / deg C
    hot_fraction: float = 0.02
    hot_A_factor: tuple[float, float] = (10.0, 30.0)
    hot_B: tuple[float, float] = (0.05, 0.09)
    flat_rate: float = 20000.0  # DN / s at the centre for unit response
    vignetting: tuple[float, float] = (0.1, 0.05)  # v, w
    flat_A_rms: float = 0.02
    flat_B_rms: float = 2e-3  # 1 / deg C
    flat_C_rms: float = 0.5  # 1 / s
    flat_tref: float = 20.0  # deg C
    flat_texp_ref: float = 0.1  # s
    temp_jitter: float = 0.05  # deg C rms of the logged temperature about the set point
    ext_temp: float = 22.0
    flat_epochs: int = 1  # repeats of every flat attempt (attempt<e>), flat_epoch_days apart
    flat_epoch_days: float = 7.0
    flat_defects: tuple[FlatDefect, ...] = ()
    seed: int = 0
    faults: tuple[str, ...] = ()
    file_names: str = "mixed"  # "mixed": frame<N>.raw, f<N>_exp<t>s_T<temp>.raw; "camera": BiasT0_exp0.012sAt0f1.raw

    def __post_init__(self):
        if self.bit_depth < 1 or self.bit_depth > 16:
            raise DetflowInputError(None, "bit_depth", "1 to 16", self.bit_depth)
        if self.adc_bits is not None and not 1 <= self.adc_bits <= self.bit_depth:
            raise DetflowInputError(None, "adc_bits", f"1 to bit_depth ({self.bit_depth})", self.adc_bits)
        if int(self.flat_epochs) != self.flat_epochs or self.flat_epochs < 1:
            raise DetflowInputError(None, "flat_epochs", "a positive integer", self.flat_epochs)
        if not all(isinstance(d, FlatDefect) for d in self.flat_defects):
            raise DetflowInputError(None, "flat_defects", "FlatDefect instances", self.flat_defects)
        if self.file_names not in FILE_NAMES:
            raise DetflowInputError(None, "file_names", " or ".join(FILE_NAMES), self.file_names)
        bad = [f for f in self.faults if f not in FAULTS]
        if bad:
            raise DetflowInputError(None, "faults", f"names among {FAULTS}", bad)

    @property
    def adc(self) -> int:
        return self.adc_bits if self.adc_bits is not None else min(12, self.bit_depth)

    @property
    def data_scale(self) -> int:
        return 2 ** (self.bit_depth - self.adc) if self.left_shift else 1

    @property
    def dtype(self) -> np.dtype:
        return np.dtype("<u2") if self.bit_depth > 8 else np.dtype("u1")


@dataclass
class SimFrame:
    """One written frame: its file, its section and the metadata an ingest must find (lower-case keywords)."""

    path: Path
    caltype: str
    meta: dict[str, Any]
    faulty: bool = False


@dataclass
class CmosSimResult:
    """Where the tree is, its truth (see the module docstring), every frame written, and the faults made."""

    outdir: Path
    roots: dict[str, Path]  # {"BIAS": .../TestSection1, "DARK": ..., "FLAT": ...}
    truth: dict[str, Any]
    frames: list[SimFrame]
    data_scale: int
    config: CmosSimConfig
    faults: dict[str, dict] = field(default_factory=dict)  # fault -> {"file": Path, "frames": [Path]}

    def frames_of(self, caltype: str, good: bool = True) -> list[SimFrame]:
        return [f for f in self.frames if f.caltype == caltype and not (good and f.faulty)]


def vignetting(height: int, width: int, v: float, w: float) -> np.ndarray:
    """``1 - v r^2 - w r^4``, ``r`` the distance from the frame centre over the distance to a corner."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    r2 = ((y - cy) ** 2 + (x - cx) ** 2) / max(cy**2 + cx**2, 1e-12)
    return 1 - v * r2 - w * r2**2


def flat_loss(cfg: CmosSimConfig) -> np.ndarray:
    """The fraction of the flat light lost per epoch and pixel, (flat_epochs, height, width) (see FlatDefect)."""
    y, x = np.mgrid[0 : cfg.height, 0 : cfg.width].astype(np.float64)
    out = np.zeros((cfg.flat_epochs, cfg.height, cfg.width))
    for e in range(cfg.flat_epochs):
        kept = np.ones((cfg.height, cfg.width))
        for d in cfg.flat_defects:
            if e < d.first_epoch:
                continue
            r = d.radius + d.radius_growth * (e - d.first_epoch)
            depth = min(1.0, max(0.0, d.depth + d.depth_growth * (e - d.first_epoch)))
            kept *= np.where((y - d.y) ** 2 + (x - d.x) ** 2 <= r * r, 1 - depth, 1.0)
        out[e] = 1 - kept
    return out


def _truth(cfg: CmosSimConfig) -> dict[str, Any]:
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))
    shape = (cfg.height, cfg.width)
    hot = rng.random(shape) < cfg.hot_fraction
    dark_A = np.where(hot, cfg.dark_A * rng.uniform(*cfg.hot_A_factor, shape), cfg.dark_A)
    dark_B = np.where(hot, rng.uniform(*cfg.hot_B, shape), cfg.dark_B)
    return {
        "bias_a": cfg.bias_a + cfg.bias_a_rms * rng.standard_normal(shape),
        "bias_b": cfg.bias_b + cfg.bias_b_rms * rng.standard_normal(shape),
        "dark_A": dark_A, "dark_B": dark_B, "hot": hot,
        "flat_A": 1 + cfg.flat_A_rms * rng.standard_normal(shape),
        "flat_B": cfg.flat_B_rms * rng.standard_normal(shape),
        "flat_C": cfg.flat_C_rms * rng.standard_normal(shape),
        "vignetting": vignetting(cfg.height, cfg.width, *cfg.vignetting),
        "dark_gamma": cfg.dark_gamma, "dark_A_global": cfg.dark_A, "dark_B_global": cfg.dark_B,
        "Tmin": float(min(cfg.temps)),
        "flat_tref": float(cfg.flat_tref), "flat_texp_ref": float(cfg.flat_texp_ref),
        "flat_rate": cfg.flat_rate, "read_noise": cfg.read_noise, "egain": cfg.egain, "gain": cfg.gain,
        "data_scale": cfg.data_scale, "adc_bits": cfg.adc, "seed": cfg.seed,
        "flat_loss": flat_loss(cfg), "flat_epoch_days": float(cfg.flat_epoch_days),
        "flat_defects": np.array([[d.y, d.x, d.radius, d.depth, d.first_epoch, d.radius_growth, d.depth_growth]
                                  for d in cfg.flat_defects], dtype=np.float64).reshape(-1, 7),
    }  # fmt: skip


def expected_dn(truth: dict, caltype: str, temp: float, exptime: float, epoch: int = 0) -> np.ndarray:
    """Mean signal (ADC DN, before quantisation and clipping) of a frame at ``temp`` and ``exptime`` (a flat:
    of flat epoch ``epoch``)."""
    dark = truth["dark_A"] * exptime ** truth["dark_gamma"] * np.exp(truth["dark_B"] * (temp - truth["Tmin"]))
    light = 0.0
    if caltype == "FLAT":
        resp = (truth["flat_A"] + truth["flat_B"] * (temp - truth["flat_tref"])
                + truth["flat_C"] * (exptime - truth["flat_texp_ref"]))  # fmt: skip
        light = truth["flat_rate"] * exptime * truth["vignetting"] * resp
        loss = truth.get("flat_loss")
        if loss is not None and len(loss) and np.any(loss[min(epoch, len(loss) - 1)]):
            light = light * (1 - loss[min(epoch, len(loss) - 1)])
    return truth["bias_a"] + truth["bias_b"] * temp + (dark + light) * truth["gain"]


def _frame(truth: dict, cfg: CmosSimConfig, caltype: str, temp: float, exptime: float, rng, epoch: int = 0,
           ) -> np.ndarray:  # fmt: skip
    bias = truth["bias_a"] + truth["bias_b"] * temp
    charge = np.clip(expected_dn(truth, caltype, temp, exptime, epoch) - bias, 0, None)
    counts = rng.poisson(charge * cfg.egain) / cfg.egain
    value = bias + counts + cfg.read_noise * rng.standard_normal(charge.shape)
    adc = np.clip(np.rint(value), 0, 2**cfg.adc - 1)
    return (adc * cfg.data_scale).astype(cfg.dtype)


def _fmt(value: float, digits: int, comma: bool) -> str:
    text = f"{value:.{digits}f}"
    return text.replace(".", ",") if comma else text


def _attempts(cfg: CmosSimConfig) -> list[tuple[str, str, float, float, int, int]]:
    """(caltype, relative dir, set temperature, exposure, attempt number, frames) of every attempt, in order."""
    out = []
    for temp in cfg.temps:
        for a in range(cfg.bias_attempts):
            out.append(("BIAS", f"T{temp:g}/attempt{a}", temp, cfg.bias_exptime, a, cfg.n_bias))
    for temp in cfg.temps:
        for t in cfg.dark_exptimes:
            out.append(("DARK", f"{cfg.n_dark}Frames/T{temp:g}/{t:g}s/attempt0", temp, t, 0, cfg.n_dark))
    for temp in cfg.temps:
        for t in cfg.flat_exptimes:
            for e in range(cfg.flat_epochs):
                out.append(("FLAT", f"ContinuousFrames/T{temp:g}/{t:g}s/attempt{e}", temp, t, e, cfg.n_flat))
    return out


def _rng(cfg: CmosSimConfig, caltype: str, temp: float, exptime: float, attempt: int) -> np.random.Generator:
    key = (1, cmos.CALTYPES.index(caltype), round(temp * 1000) + 10**7, round(exptime * 1e6), attempt)
    return np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=key))


def _camera_name(k: int, caltype: str, temp: float, exptime: float, attempt: int, n: int) -> str:
    """The camera software's frame file name (three spellings, by the variant number ``k``)."""
    cal = caltype.capitalize()
    if k % 3 == 0:
        return f"{cal}T{temp:g}_exp{exptime:g}sAt{attempt}f{n}.raw"
    if k % 3 == 1:
        return f"{cal}_T{temp:g}_exp_{exptime:g}s_At{attempt}_frame{n}.raw"
    return f"{cal}T{temp:g}C_exp{exptime * 1e3:g}msAt{attempt}f{n:03d}.raw"


def _write_attempt(tmp_root: Path, final_root: Path, k: int, spec: tuple, cfg: CmosSimConfig, truth: dict,
                   ) -> list[SimFrame]:  # fmt: skip
    caltype, rel, temp_set, exptime, attempt, nframes = spec
    section = SECTION_DIRS[caltype]
    d = tmp_root / section / rel
    final = final_root / section / rel
    (d / cmos.FRAMES_DIR).mkdir(parents=True)
    rng = _rng(cfg, caltype, temp_set, exptime, attempt)
    # config
    sep = "=" if k % 2 == 0 else ": "
    lines = [f"# {caltype.lower()} attempt {attempt} at T{temp_set:g}", f"HEIGHT{sep}{cfg.height}",
             f"WIDTH{sep}{cfg.width}", f"BIT_DEPTH{sep}{cfg.bit_depth}  # bits per stored sample", ""]  # fmt: skip
    filt = cmos.NO_FILTER
    if caltype == "FLAT" and cfg.flat_filter:
        lines.insert(3, f"FILTER{sep}{cfg.flat_filter}")
        filt = cfg.flat_filter
    (d / cmos.CONFIG_NAMES[1 if k % 3 == 2 else 0]).write_text("\n".join(lines))
    # log + frames
    delim, comma = _DIALECTS[k % 4]
    temp_col = _TEMP_COLUMNS[k % 5]
    camera = cfg.file_names == "camera"
    f_style = k % 3 == 1
    no_exptime = k % 2 == 0 if camera else f_style and (k // 3) % 2 == 0
    cols = ["FrameNum", "TimeStamp", temp_col, "ExtTemperature"]
    cols += [] if no_exptime else ["ExpTime", "RealExpTime"]
    cols += ["ExpGain", "InitialTemp", "DeltaTemperature", "PowerCons", "Status"]
    rows = [delim.join(cols)]
    frames = []
    start = k % 2
    exp_us = round(exptime * 1e6)
    t_log = exp_us / cmos.US_PER_S
    temps = np.round(temp_set + cfg.temp_jitter * rng.standard_normal(nframes), 3)
    epoch = attempt if caltype == "FLAT" else 0
    t0 = _T0 + _dt.timedelta(days=cmos.CALTYPES.index(caltype) + epoch * cfg.flat_epoch_days, hours=k)
    for i in range(nframes):
        n = start + i
        temp = float(temps[i])
        stamp = (t0 + _dt.timedelta(seconds=i * (exptime + 0.05))).isoformat(timespec="milliseconds")
        real_us = exp_us + int(rng.integers(0, 20))
        delta = round(temp - float(temps[0]), 3)
        power = round(2.5 + 0.01 * temp_set + 0.001 * i, 4)
        ext = round(cfg.ext_temp + 0.1 * rng.standard_normal(), 2)
        vals = [str(n), stamp, _fmt(temp, 3, comma), _fmt(ext, 2, comma)]
        vals += [] if no_exptime else [str(exp_us), str(real_us)]
        vals += [_fmt(cfg.gain, 2, comma), _fmt(float(temps[0]), 3, comma), _fmt(delta, 3, comma),
                 _fmt(power, 4, comma), "OK"]  # fmt: skip
        rows.append(delim.join(vals))
        if camera:
            name = _camera_name(k, caltype, temp_set, exptime, attempt, n)
        else:
            name = f"f{n}_exp{exptime:g}s_T{temp_set:.1f}.raw" if f_style else f"frame{n}.raw"
        _frame(truth, cfg, caltype, temp, t_log, rng, epoch).tofile(d / cmos.FRAMES_DIR / name)
        meta = {"framenum": n, "timestamp": stamp, "eqtemp": ext, "exptime": t_log,
                "rexptime": math.nan if no_exptime else real_us / cmos.US_PER_S, "gain": float(cfg.gain), "temp": temp,
                "temp_0": float(temps[0]), "deltmp": delta, "powcons": power, "filetemp": float(temp_set),
                "caltype": caltype, "filter": filt, "attempt": attempt,
                "path": str((final / cmos.FRAMES_DIR / name).absolute())}  # fmt: skip
        frames.append(SimFrame(final / cmos.FRAMES_DIR / name, caltype, meta))
    (d / cmos.LOG_NAMES[0]).write_text("\n".join(rows) + "\n")
    return frames


def _apply_faults(cfg: CmosSimConfig, tmp: Path, outdir: Path, frames: list[SimFrame]) -> dict[str, dict]:
    """Break the inputs named by ``cfg.faults`` (in the temporary tree); mark the frames concerned."""
    out: dict[str, dict] = {}

    def local(p: Path) -> Path:
        return tmp / p.relative_to(outdir)

    def attempt_frames(caltype: str, which: int) -> list[SimFrame]:
        dirs = sorted({f.path.parent.parent for f in frames if f.caltype == caltype}, key=str)
        d = dirs[which]
        return [f for f in frames if f.path.parent.parent == d]

    for fault in cfg.faults:
        if fault == "bad_size":
            f = attempt_frames("DARK", 0)[0]
            p = local(f.path)
            p.write_bytes(p.read_bytes()[: -cfg.width * cfg.dtype.itemsize])  # one row short
            hit, file = [f], f.path
        elif fault == "no_frame_column":
            hit = attempt_frames("FLAT", 0)
            file = hit[0].path.parent.parent / cmos.LOG_NAMES[0]
            p = local(file)
            p.write_text(p.read_text().replace("FrameNum", "Frame_No", 1))
        elif fault == "missing_config":
            hit = attempt_frames("BIAS", 1)
            file = hit[0].path.parent.parent
            for name in cmos.CONFIG_NAMES:
                (local(file) / name).unlink(missing_ok=True)
        elif fault == "missing_log_row":
            f = attempt_frames("DARK", -1)[1]
            file = f.path.parent.parent / cmos.LOG_NAMES[0]
            p = local(file)
            lines = p.read_text().splitlines()
            delim = next(d for d in (",", ";", "\t") if d in lines[0])
            lines = [ln for ln in lines if ln.split(delim)[0] != str(f.meta["framenum"])]
            p.write_text("\n".join(lines) + "\n")
            hit = [f]
        for f in hit:
            f.faulty = True
        out[fault] = {"file": file, "frames": [f.path for f in hit]}
    return out


def simulate_cmos_tree(outdir: str | os.PathLike, cfg: CmosSimConfig | None = None) -> CmosSimResult:
    """Write the raw tree of :class:`CmosSimConfig` under ``outdir`` and return where, the truth and the frames."""
    cfg = cfg or CmosSimConfig()
    outdir = Path(outdir).absolute()
    targets = [outdir / s for s in cmos.SECTIONS] + [outdir / "truth.npz"]
    existing = [p for p in targets if p.exists()]
    if existing:
        raise OutputExistsError(existing[0], "outdir", "a directory without an earlier simulated tree", "it exists")
    outdir.mkdir(parents=True, exist_ok=True)
    tmp = outdir / f".cmos-sim-partial-{uuid.uuid4().hex[:8]}"
    try:
        truth = _truth(cfg)
        frames: list[SimFrame] = []
        counts = dict.fromkeys(cmos.CALTYPES, 0)
        for spec in _attempts(cfg):
            # the variant number: the section's offset + the attempt's index in its section, so that more
            # temperatures (appended to temps) leave the earlier attempts as they were
            sec = cmos.CALTYPES.index(spec[0])
            frames.extend(_write_attempt(tmp, outdir, sec + counts[spec[0]], spec, cfg, truth))
            counts[spec[0]] += 1
        faults = _apply_faults(cfg, tmp, outdir, frames)
        np.savez(tmp / "truth.npz", **{k: np.asarray(v) for k, v in truth.items()},
                 config=np.asarray(repr(dataclasses.asdict(cfg))))  # fmt: skip
        for p in targets:
            (tmp / p.name).rename(p)
    except BaseException:
        for p in targets:  # a rename that happened before the failure
            if p.exists() and not (tmp / p.name).exists():
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    roots = {cal: outdir / sec for cal, sec in SECTION_DIRS.items()}
    return CmosSimResult(outdir, roots, truth, frames, cfg.data_scale, cfg, faults)
