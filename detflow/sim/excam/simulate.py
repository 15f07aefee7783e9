"""The simulation run (:func:`simulate_excam`): plans every output path, refuses any that exists, builds
the truth, then writes the calibration files, the L1 frames, ``truth.npz`` and ``config_file.yaml``, each
atomically, removing what it wrote if anything fails."""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np

from detflow.errors import OutputExistsError
from detflow.io.store.atomic import atomic_write, temp_leftovers

from .config import ExcamSimConfig, SimResult
from .fits_files import _headers, _write_fits_frame, _write_fits_map
from .frame import _simulate_frame
from .iit import CALIB_FILES, _config_yaml, _resolve_table, _unity_table
from .truth import _build_truth


class _Writer:
    """Writes files atomically (:func:`~detflow.io.store.atomic_write`) and remembers them so a failed run
    can clean up."""

    def __init__(self) -> None:
        self.created: list[Path] = []
        self.dirs: list[Path] = []

    def mkdir(self, path: Path) -> None:
        missing = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir()
            self.dirs.append(d)

    def write(self, path: Path, fn) -> Path:
        atomic_write(path, fn)
        self.created.append(path)
        return path

    def cleanup(self) -> None:
        for p in self.created:
            p.unlink(missing_ok=True)
        for d in reversed(self.dirs):
            try:
                d.rmdir()
            except OSError:
                pass


def _write_npz(path: Path, arrays: dict) -> None:
    """Like ``np.savez`` (``np.load`` reads it), but the boolean masks are deflated: a per-frame cosmic
    ray mask is 1 MB per frame uncompressed and almost all False."""
    with zipfile.ZipFile(path, "w", allowZip64=True) as zf:
        for name, arr in arrays.items():
            arr = np.asanyarray(arr)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if arr.dtype == bool else zipfile.ZIP_STORED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, arr, allow_pickle=False)


def _planned(outdir: Path, cfg: ExcamSimConfig, source: Path | None, write_calibs: bool):
    l1 = [outdir / "l1" / f"{cfg.name}_L1_{k:04d}.fits" for k in range(cfg.n_frames)]
    calib: dict[str, Path] = {}
    if write_calibs:
        calib = {key: outdir / rel for key, rel in CALIB_FILES.items()}
        if source is not None:
            calib["non_linearity_filepath"] = outdir / "calib" / source.name
        elif cfg.nonlin_table is not None:
            calib["non_linearity_filepath"] = outdir / "calib" / "nonlin_table.csv"
        else:
            calib["non_linearity_filepath"] = outdir / "calib" / "nonlin_unity.csv"
    config = outdir / "config_file.yaml" if write_calibs else None
    return l1, calib, outdir / "truth.npz", config


def simulate_excam(outdir: str | os.PathLike, cfg: ExcamSimConfig | None = None, *,
                   write_calibs: bool = True) -> SimResult:  # fmt: skip
    """Simulate ``cfg.n_frames`` EXCAM L1 frames (and, with ``write_calibs``, the calibration files and
    ``config_file.yaml``) plus ``truth.npz`` into ``outdir``.

    Raises :class:`detflow.errors.OutputExistsError` (before any work) if ``outdir/l1`` holds any file
    or any output exists; on failure removes what it wrote.
    """
    t_start = time.perf_counter()
    cfg = cfg if cfg is not None else ExcamSimConfig()
    outdir = Path(outdir).resolve()
    table, source = _resolve_table(cfg)
    l1_paths, calib, truth_path, config_path = _planned(outdir, cfg, source, write_calibs)
    l1_dir = outdir / "l1"
    if l1_dir.is_dir() and any(l1_dir.iterdir()):
        raise OutputExistsError(l1_dir, "outdir", "no earlier L1 files in outdir/l1 (simulate_excam never overwrites)",
                                f"{sum(1 for _ in l1_dir.iterdir())} file(s)")  # fmt: skip
    planned = [*l1_paths, *calib.values(), truth_path] + ([config_path] if config_path else [])
    existing = [p for p in planned if p.exists() or temp_leftovers(p)]
    if existing:
        raise OutputExistsError(existing[0], "outdir", "a directory without earlier simulator outputs "
                                "(simulate_excam never overwrites)", f"{len(existing)} existing output file(s)")  # fmt: skip
    w = _Writer()
    try:
        return _simulate_into(cfg, outdir, w, table, source, l1_paths, calib, truth_path, config_path, t_start)
    except BaseException:
        w.cleanup()
        raise


def _simulate_into(cfg, outdir, w, table, source, l1_paths, calib, truth_path, config_path, t_start) -> SimResult:
    w.mkdir(outdir / "l1")
    truth = _build_truth(cfg, table, source)
    if calib:
        w.mkdir(outdir / "calib")
        maps = {"dark_current_map": (truth.dark, "electron / s", "dark current D"),
                "fixed_pattern_noise": (truth.fpn, "electron", "fixed-pattern noise F (gain-register output)"),
                "EXCAM_clock_induced_charge": (truth.cic, "electron", "clock-induced charge C per frame"),
                "flatfield_filepath": (truth.flat, "", "flat field (relative response)"),
                "badpix_filepath": ((truth.hot | truth.low_qe).astype(np.uint8), "", "bad pixels (1 = bad)")}  # fmt: skip
        for key, (data, unit, what) in maps.items():
            w.write(calib[key], lambda p, d=data, u=unit, s=what: _write_fits_map(p, d, u, s))
        nl = calib["non_linearity_filepath"]
        if source is not None:
            w.write(nl, lambda p: shutil.copyfile(source, p))
        else:
            tab = table if table is not None else _unity_table()
            w.write(nl, lambda p: np.savetxt(p, tab, delimiter=",", fmt="%.10g"))

    img_shape = cfg.image_shape
    cosmic = np.zeros((cfg.n_frames, *img_shape), dtype=bool)
    row_bias = np.zeros((cfg.n_frames, cfg.geom.frame_rows))
    cr = {"frame": [], "row": [], "col": [], "charge": []}
    geom = cfg.geom
    for k, path in enumerate(l1_paths):
        frame, rb, mask, (rows, cols, charges) = _simulate_frame(cfg, truth, k)
        cosmic[k], row_bias[k] = mask, rb
        cr["frame"] += [k] * len(rows)
        cr["row"] += [r + geom.image.row0 for r in rows]
        cr["col"] += [c + geom.image.col0 for c in cols]
        cr["charge"] += charges
        pri, ext = _headers(cfg, k, path.name)
        w.write(path, lambda p, f=frame, a=pri, b=ext: _write_fits_frame(p, f, a, b))

    g, t = float(cfg.em_gain), float(cfg.exptime)
    light = truth.flat * truth.flux * t
    arrays = {
        "flux": truth.flux, "flat": truth.flat, "dark_current": truth.dark, "cic": truth.cic, "fpn": truth.fpn,
        "badpix": (truth.hot | truth.low_qe).astype(np.uint8), "hot": truth.hot, "low_qe": truth.low_qe,
        "expected_l2b_e": light, "expected_flat_corrected_e": truth.flux * t,
        "expected_dark_e": truth.fpn / g + truth.dark * t + truth.cic,
        "expected_frame_e": truth.mean_e + truth.fpn / g, "mean_charge_e": truth.mean_e,
        "cosmic_mask": cosmic, "row_bias_dn": row_bias, "row_bias_pattern_dn": truth.row_pattern,
        "cr_frame": np.asarray(cr["frame"], dtype=np.int64), "cr_row": np.asarray(cr["row"], dtype=np.int64),
        "cr_col": np.asarray(cr["col"], dtype=np.int64), "cr_charge_e": np.asarray(cr["charge"], dtype=np.float64),
        "nonlin_table": table if table is not None else np.zeros((0, 0)),
        "exptime": np.float64(t), "em_gain": np.float64(g), "eperdn": np.float64(cfg.eperdn),
        "read_noise_e": np.float64(cfg.read_noise_e), "smear_a": np.float64(cfg.smear_a),
        "cr_tail_efold": np.float64(cfg.tail_efold), "seed": np.int64(cfg.seed), "n_frames": np.int64(cfg.n_frames),
        "image_row0": np.int64(geom.image.row0), "image_col0": np.int64(geom.image.col0),
        "geometry": np.str_(geom.name), "config_json": np.str_(cfg.to_json()),
    }  # fmt: skip
    w.write(truth_path, lambda p: _write_npz(p, arrays))
    if config_path is not None:
        rel = {key: p.relative_to(outdir).as_posix() for key, p in calib.items()}
        w.write(config_path, lambda p: p.write_text(_config_yaml(cfg, rel)))
    return SimResult(outdir, list(l1_paths), dict(calib), truth_path, config_path, time.perf_counter() - t_start)
