"""Benchmark: Roman Coronagraph EXCAM, detflow against corgidrp 5.1.1, same run, same frames.

Two benchmarks (the EXCAM issue's targets: L1 -> L2b at least 10x corgidrp's frames/s; the mean +
median combine of 25,000 1024x1024 frames under 4 GB, flat as the number of frames grows):

1. **L1 -> L2b** (``--frames N``): N simulated SCI frames (1200x2200, EM gain 100, EXPTIME 5 s, the
   TVAC nonlinearity table; ``detflow.sim.excam``) through ``detflow.run`` with the simulator's II&T
   ``config_file.yaml`` (absolute paths), on a LocalCluster of 1 worker process x 2 threads (the
   default embedded cluster's shape, created once so the timed runs are warm: a 4-frame run compiles
   every kernel first). Two timed runs: ``combine: []`` (L2a and L2b stores only: the work corgidrp's
   chain does, plus writing) and ``combine: [l2b]`` (the issue's job: plus the mean and median
   combines). Wall time, frames/s, peak RSS of the whole process tree (client + scheduler + nanny +
   worker) and of the worker alone, the task stream's worker-seconds by task name. Then corgidrp's
   chain on the first ``--corgi-frames M`` of the same files in a child process (``HOME`` a temp
   directory: corgidrp writes ``~/.corgidrp`` on import): prescan_biassub, detect_cosmic_rays,
   correct_nonlinearity, update_to_l2a, convert_to_electrons, em_gain_division, dark_subtraction
   (DetectorNoiseMaps of the simulator's FPN/CIC/DC maps padded into the full frame), desmear,
   flat_division, correct_bad_pixels, built as ``tests/test_excam_vs_corgidrp.py`` builds them; time
   per step (reading the files and building the calibration objects are timed apart and not counted),
   peak RSS. Ratio of frames/s, and corgidrp's L2b data compared with detflow's (the same work done).
2. **combine** (``--combine-frames 1000,5000,25000``): the L2b stack is synthesized inside the tasks
   (25,000 float32 frames are 100 GB: no disk here holds them): a dask array (frame, y, x) chunked
   (all frames, t, t), ``t = detflow.instruments.roman_excam_plan.combine_tile(n, 1024, 1024, 256)`` (what a run
   uses), each block generated from a counter-based hash of (frame, pixel) (so frame k is the same in
   every run and tiling): electrons ``lam + sqrt(2 lam + 1) z`` over a scene, ``z`` an Irwin-Hall(4)
   deviate, ``err`` its sigma, ``dq`` JUMP_DET on ~1/1024 of the pixel-frames and HOT (data NaN) on
   ~1/16384 of the pixels in every frame, and every 1000th frame ``rejected``.
   ``detflow.steps.excam.combine`` mean + median written to a zarr store through
   ``StoreWriter.add_all``, as ``run_excam`` writes its combines (``--no-combine-write``: computed
   only). For each size: a fresh worker (``client.restart``, then a 16-frame warm-up), a pass that
   only generates and sums (the generation cost, stated apart; for large stacks on the first rows of
   the image only, at most 2e9 pixel-frames, and scaled), then the timed combine. Against
   ``corgidrp.combine.combine_images`` (numpy nanmean / nanmedian of the stack in RAM, float64 data
   and err as corgidrp holds L2b data, its uint16 DQ) in a child process at
   ``--corgi-combine-frames`` sizes (~50 MB per frame at its peak: sizes that do not fit the available
   memory are skipped), with detflow run on the same frames for the per-frame time ratio and a check
   that the results agree.

Every timed run records the CPU that other processes used meanwhile (``other_cores``).

Usage: ``python bench/bench_excam.py [--frames 100] [--corgi-frames 10] [--combine-frames 1000]
[--corgi-combine-frames 100] [--full] [--skip-l2b] [--skip-combine] [--skip-corgidrp] [--keep-sim]
[--no-combine-write]``; ``--full`` = ``--frames 1000 --corgi-frames 50 --combine-frames
1000,5000,25000 --corgi-combine-frames 200,300``, about an hour in one invocation on 2 cores: run the
parts separately (bench/README.md and run_all.py give the commands): the L1 -> L2b part at 1000 frames
takes ~23 min (plus ~3 min to simulate the frames; ~15 GB of disk, removed afterwards unless
``--keep-sim``), the combine at 25,000 frames ~30 min on the whole image (``--combine-rows 512``: half
the image, times scaled, ~13 min).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
from numba import njit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_wfi import OtherCPU, PeakRSS, _task_name, git_version, tree_rss

GIB = 2**30
TVAC_TABLE = HERE.parent / "tests" / "data" / "nonlin_table_TVAC.txt"
SIM = {"em_gain": 100.0, "exptime": 5.0, "seed": 0}  # ExcamSimConfig fields of the benchmark's frames
CALIB_KEYS = ("flatfield_filepath", "dark_current_map", "fixed_pattern_noise", "EXCAM_clock_induced_charge",
              "badpix_filepath", "non_linearity_filepath")  # fmt: skip
L1_BYTES = 5_299_200  # one simulated SCI L1 FITS file
STORE_BYTES_PER_FRAME = 2 * 3 * 4 * 1024 * 1024  # l2a + l2b, data/err/dq, uncompressed (an upper bound)
# corgidrp's cosmic-ray parameters: the II&T defaults detflow's ExcamJob uses (its cosm_thresh = sat_thresh)
CR = {"sat_thresh": 0.7, "plat_thresh": 0.7, "cosm_filter": 1, "cosm_box": 3, "cosm_tail": 10}
DEFAULTS = {"frames": 100, "corgi_frames": 10, "combine_frames": "1000", "corgi_combine_frames": "100"}
FULL = {"frames": 1000, "corgi_frames": 50, "combine_frames": "1000,5000,25000", "corgi_combine_frames": "200,300"}


class TreePeak(PeakRSS):
    """Peak RSS of the process tree (``peak``), of this process alone (client + scheduler, ``peak_main``)
    and of the largest child (the dask worker, ``peak_child``), sampled every 50 ms."""

    def __init__(self, interval=0.05):
        super().__init__(interval)
        self.peak_main = self.peak_child = 0

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                main = me.memory_info().rss
            except psutil.Error:
                main = 0
            total, big = main, 0
            for p in me.children(recursive=True):
                try:
                    r = p.memory_info().rss
                except psutil.Error:
                    continue
                total += r
                big = max(big, r)
            self.peak, self.peak_main, self.peak_child = (
                max(self.peak, total),
                max(self.peak_main, main),
                max(self.peak_child, big),
            )
            time.sleep(self.interval)


def task_seconds(ts_data, top=10) -> dict:
    """Worker-seconds of computing by task name (the task stream), the total and the task count."""
    busy: dict[str, float] = {}
    for t in ts_data:
        name = _task_name(t["key"])
        busy[name] = busy.get(name, 0.0) + sum(
            x["stop"] - x["start"] for x in t["startstops"] if x["action"] == "compute"
        )
    return {"task_s": sum(busy.values()), "n_tasks": len(ts_data),
            "top_tasks_s": dict(sorted(busy.items(), key=lambda kv: -kv[1])[:top])}  # fmt: skip


def disk_free(path: Path) -> int:
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def timed(client, fn):
    """``fn()`` with wall time, peak RSS (tree, main, worker), other processes' CPU and the task stream."""
    from distributed import get_task_stream

    rss0 = tree_rss()
    with TreePeak() as mem, OtherCPU() as cpu, get_task_stream(client) as ts:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
    return {"s": dt, "peak_rss": mem.peak, "peak_rss_main": mem.peak_main, "peak_rss_worker": mem.peak_child,
            "rss_before": rss0, "our_cores": cpu.ours_cores, "other_cores": cpu.other_cores,
            "iowait_cores": cpu.iowait_cores, **task_seconds(ts.data)}  # fmt: skip


def run_child(code: str, payload: dict, home: Path) -> dict:
    """Run ``code`` in a child Python (``HOME`` = ``home``) with ``payload`` as argv[1]; its last stdout
    line is the JSON result."""
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(
        [sys.executable, "-c", code, json.dumps(payload)], capture_output=True, text=True, env=env, check=False
    )
    if r.returncode != 0:
        print(r.stdout[-2000:], r.stderr[-4000:])
        raise SystemExit("corgidrp reference run failed")
    return json.loads(r.stdout.strip().splitlines()[-1])


# =================================================================================================
# 1. L1 -> L2b
# =================================================================================================
def ensure_sim(out: Path, n: int) -> tuple[Path, float | None]:
    """``out/excam_sim`` with at least ``n`` L1 frames (frame k is the same whatever the frame count, so a
    larger simulation serves every smaller benchmark); simulated if missing or too short."""
    from detflow.sim.excam import ExcamSimConfig, simulate_excam

    simdir = out / "excam_sim"
    stamp = simdir / "bench_sim.json"
    want = {**SIM, "nonlin_table": str(TVAC_TABLE)}
    if (simdir / "config_file.yaml").exists() and stamp.exists():
        got = json.loads(stamp.read_text())
        if got.get("params") == want and got.get("n_frames", 0) >= n:
            return simdir, None
    shutil.rmtree(simdir, ignore_errors=True)
    need = n * (L1_BYTES + STORE_BYTES_PER_FRAME) + 2 * GIB
    if disk_free(out) < need:
        raise SystemExit(f"{n} frames need ~{need / 1e9:.0f} GB on {out} (inputs + store), "
                         f"{disk_free(out) / 1e9:.0f} GB free: use a smaller --frames")  # fmt: skip
    t0 = time.perf_counter()
    simulate_excam(simdir, ExcamSimConfig(n_frames=n, nonlin_table=TVAC_TABLE, **SIM))
    t_sim = time.perf_counter() - t0
    stamp.write_text(json.dumps({"params": want, "n_frames": n}))
    print(f"simulated {n} EXCAM SCI frames in {t_sim:.0f} s ({simdir})", flush=True)
    return simdir, t_sim


def excam_job(simdir: Path, files: list[Path], store: Path) -> dict:
    """The simulator's II&T config_file.yaml with absolute paths, the inputs, the store and the combines."""
    import yaml

    raw = yaml.safe_load((simdir / "config_file.yaml").read_text())
    for k in CALIB_KEYS:
        raw[k] = str((simdir / raw[k]).resolve())
    raw.update({"input": [str(f) for f in files], "output": str(store), "combine": ["l2b"]})
    return raw


CORGI_L2B_CHILD = textwrap.dedent("""
    import json, os, resource, sys, time
    import numpy as np
    a = json.loads(sys.argv[1])
    os.chdir(a["workdir"])  # dark_subtraction saves its synthesized dark in outputdir
    t0 = time.perf_counter()
    import corgidrp.data as cd, corgidrp.l1_to_l2a as l1a, corgidrp.l2a_to_l2b as l2b
    from corgidrp import mocks
    from astropy.io import fits
    t_import = time.perf_counter() - t0
    times, setup = {}, {}

    def cal_headers():
        pri, ext, _, _ = mocks.create_default_calibration_product_headers()
        return pri, ext

    def step(name, fn):
        t = time.perf_counter()
        out = fn()
        times[name] = time.perf_counter() - t
        return out

    t = time.perf_counter()
    ds = cd.Dataset(a["files"])
    t_read = time.perf_counter() - t
    c = a["calib"]
    r0, r1, c0, c1 = a["image"]
    ds = step("prescan_biassub", lambda: l1a.prescan_biassub(ds, return_full_frame=False, num_stds=5))
    params = cd.DetectorParams({"KGAINPAR": a["eperdn"], "FWC_PP_E": a["fwc_pp_e"], "FWC_EM_E": a["fwc_em_e"]})
    cr = a["cr"]
    ds = step("detect_cosmic_rays", lambda: l1a.detect_cosmic_rays(ds, params, cosm_thresh=cr["sat_thresh"], **cr))
    t = time.perf_counter()
    table = np.genfromtxt(c["non_linearity_filepath"], delimiter=",")
    pri, ext = cal_headers()
    nonlin = cd.NonLinearityCalibration(table, pri_hdr=pri, ext_hdr=ext, input_dataset=ds)
    setup["nonlinearity"] = time.perf_counter() - t
    ds = step("correct_nonlinearity", lambda: l1a.correct_nonlinearity(ds, nonlin))
    ds = step("update_to_l2a", lambda: l1a.update_to_l2a(ds))
    t = time.perf_counter()
    pri, ext = cal_headers()
    ext["RN"], ext["RN_ERR"] = a["read_noise_e"], 0.0
    kgain = cd.KGain(a["eperdn"], pri_hdr=pri, ext_hdr=ext, input_dataset=ds)
    setup["kgain"] = time.perf_counter() - t
    ds = step("convert_to_electrons", lambda: l2b.convert_to_electrons(ds, kgain))
    ds = step("em_gain_division", lambda: l2b.em_gain_division(ds))
    t = time.perf_counter()
    full = tuple(a["frame_shape"])
    maps = []
    for key in ("fixed_pattern_noise", "EXCAM_clock_induced_charge", "dark_current_map"):  # corgidrp's order: FPN, CIC, DC
        m = np.zeros(full)
        m[r0:r1, c0:c1] = fits.getdata(c[key])
        maps.append(m)
    pri, ext = cal_headers()
    ext["B_O"], ext["B_O_ERR"] = 0.0, 0.0
    noise = cd.DetectorNoiseMaps(np.stack(maps), pri_hdr=pri, ext_hdr=ext, input_dataset=ds,
                                 err=np.zeros((1, 3) + full), dq=np.zeros((3,) + full, dtype=int))
    setup["noise_maps"] = time.perf_counter() - t
    ds = step("dark_subtraction", lambda: l2b.dark_subtraction(ds, noisemaps=noise, outputdir=a["workdir"]))
    ds = step("desmear", lambda: l2b.desmear(ds, params))
    t = time.perf_counter()
    pri, ext = cal_headers()
    ff = cd.FlatField(fits.getdata(c["flatfield_filepath"]).astype(float), pri_hdr=pri, ext_hdr=ext, input_dataset=ds)
    setup["flat"] = time.perf_counter() - t
    ds = step("flat_division", lambda: l2b.flat_division(ds, ff))
    t = time.perf_counter()
    pri, ext = cal_headers()
    dark_like = ds[0].copy()
    dark_like.filename = "cgi_0000_drk_cal.fits"  # a bad-pixel map records a dark among its inputs
    bpm = cd.BadPixelMap(fits.getdata(c["badpix_filepath"]).astype(np.uint8), pri_hdr=pri, ext_hdr=ext,
                         input_dataset=cd.Dataset([dark_like]))
    setup["badpix"] = time.perf_counter() - t
    ds = step("correct_bad_pixels", lambda: l2b.correct_bad_pixels(ds, bpm))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    np.save(os.path.join(a["workdir"], "l2b_data.npy"), ds.all_data.astype(np.float32))
    print(json.dumps({"steps_s": times, "read_s": t_read, "setup_s": setup, "import_s": t_import,
                      "peak_rss": ru.ru_maxrss * 1024, "cpu_s": ru.ru_utime + ru.ru_stime,
                      "dtypes": [str(ds.all_data.dtype), str(ds.all_err.dtype), str(ds.all_dq.dtype)],
                      "err_shape": list(ds.all_err.shape)}))
""")


def l2b_bench(args, client) -> dict:
    """detflow L1 -> L2b (+ store, + combines) on ``args.frames`` frames, against corgidrp's chain."""
    import detflow
    from detflow.instruments import roman_excam
    from detflow.io.store import open_store

    simdir, t_sim = ensure_sim(args.out, args.frames)
    files = sorted((simdir / "l1").glob("*.fits"))[: args.frames]
    need = args.frames * STORE_BYTES_PER_FRAME + GIB
    free = disk_free(args.out)
    print(f"disk: {free / 1e9:.0f} GB free on {args.out}, the store needs at most ~{need / 1e9:.0f} GB", flush=True)
    if free < need:
        raise SystemExit("not enough disk for the store: use a smaller --frames")

    warm = args.out / "excam_warmup.zarr"
    shutil.rmtree(warm, ignore_errors=True)
    t0 = time.perf_counter()
    detflow.run(excam_job(simdir, files[:4], warm), client=client, progress=False)
    t_warm = time.perf_counter() - t0
    shutil.rmtree(warm, ignore_errors=True)
    print(f"warm-up: 4 frames in {t_warm:.1f} s (numba compiling in the worker, reference checksums)", flush=True)

    # the run without its combines first (combine: [], the steps corgidrp's chain does, plus the store),
    # then the job of the issue (combine: [l2b]), whose store the comparison reads
    store = args.out / f"excam_l2b_{args.frames}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    r0 = timed(
        client, lambda: detflow.run({**excam_job(simdir, files, store), "combine": []}, client=client, progress=False)
    )
    r0.update({"frames": args.frames, "frames_per_s": args.frames / r0["s"], "store_bytes": dir_bytes(store)})
    shutil.rmtree(store, ignore_errors=True)
    job = excam_job(simdir, files, store)
    r = timed(client, lambda: detflow.run(job, client=client, progress=False))
    r.update({"frames": args.frames, "frames_per_s": args.frames / r["s"], "store_bytes": dir_bytes(store),
              "warmup_4_frames_s": t_warm, "sim_s": t_sim, "no_combine": r0})  # fmt: skip
    for label, x in (("L1 -> L2a, L2b (store, no combines)", r0), ("L1 -> L2b + mean/median combines", r)):
        print(f"detflow {label}, {args.frames} frames: {x['s']:.1f} s = {x['frames_per_s']:.2f} frames/s, peak RSS "
              f"{x['peak_rss'] / GIB:.2f} GiB (worker {x['peak_rss_worker'] / GIB:.2f}, client+scheduler "
              f"{x['peak_rss_main'] / GIB:.2f}), store {x['store_bytes'] / 1e9:.1f} GB   "
              f"[others: {x['other_cores']:.2f} cores, iowait {x['iowait_cores']:.2f}]", flush=True)  # fmt: skip
    m = min(args.corgi_frames, args.frames)
    ours = None
    if not args.skip_corgidrp and m:
        tree = open_store(store)
        ours = np.asarray(tree["l2b"]["data"].isel(frame=slice(0, m)).values)
        r["rejected_frames"] = int((tree["l2b"]["rejected"].values != 0).sum())
    shutil.rmtree(store, ignore_errors=True)
    if args.skip_corgidrp or not m:
        return r

    geom = roman_excam.GEOMETRIES["SCI"]
    cfg = excam_job(simdir, files, store)
    home = Path(tempfile.mkdtemp(prefix="corgidrp-home-"))
    work = Path(tempfile.mkdtemp(prefix="corgidrp-work-", dir=args.out))
    payload = {"files": [str(f) for f in files[:m]], "workdir": str(work),
               "calib": {k: cfg[k] for k in CALIB_KEYS}, "eperdn": cfg["eperdn"], "fwc_em_e": cfg["fwc_em_e"],
               "fwc_pp_e": cfg["fwc_pp_e"], "read_noise_e": 100.0, "cr": CR,
               "image": [geom.image.row0, geom.image.row0 + geom.image.rows, geom.image.col0,
                         geom.image.col0 + geom.image.cols],
               "frame_shape": [geom.frame_rows, geom.frame_cols]}  # fmt: skip
    print(f"corgidrp 5.1.1 L1 -> L2b on the first {m} frames (child process) ...", flush=True)
    t0 = time.perf_counter()
    c = run_child(CORGI_L2B_CHILD, payload, home)
    c["wall_s"] = time.perf_counter() - t0
    theirs = np.load(work / "l2b_data.npy")
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)
    c["frames"] = m
    c["steps_total_s"] = sum(c["steps_s"].values())
    c["frames_per_s"] = m / c["steps_total_s"]
    c["frames_per_s_with_read"] = m / (c["steps_total_s"] + c["read_s"])
    both = np.isfinite(ours) & np.isfinite(theirs)
    scale = float(np.nanmax(np.abs(theirs)))
    c["compare"] = {"max_abs_diff_e": float(np.max(np.abs(ours[both] - theirs[both]))) if both.any() else None,
                    "median_abs_diff_e": float(np.median(np.abs(ours[both] - theirs[both]))) if both.any() else None,
                    "max_abs_value_e": scale, "nan_disagree_pixels": int((np.isnan(ours) != np.isnan(theirs)).sum()),
                    "pixels": int(ours.size)}  # fmt: skip
    r["corgidrp"] = c
    r["ratio_frames_per_s"] = r["frames_per_s"] / c["frames_per_s"]
    r["ratio_frames_per_s_no_combine"] = r0["frames_per_s"] / c["frames_per_s"]
    steps = ", ".join(f"{k} {v:.1f}" for k, v in sorted(c["steps_s"].items(), key=lambda kv: -kv[1]))
    print(f"corgidrp L1 -> L2b, {m} frames: steps {c['steps_total_s']:.1f} s = {c['frames_per_s']:.3f} frames/s "
          f"(reading {c['read_s']:.1f} s not counted), peak RSS {c['peak_rss'] / GIB:.2f} GiB, "
          f"{c['cpu_s'] / c['wall_s']:.2f} cores", flush=True)  # fmt: skip
    print(f"  per step (s): {steps}")
    cmp_ = c["compare"]
    print(f"  same L2b data: max |detflow - corgidrp| {cmp_['max_abs_diff_e']:.3g} e- (median {cmp_['median_abs_diff_e']:.2g}; "
          f"values up to {cmp_['max_abs_value_e']:.3g} e-), NaN pattern differs at {cmp_['nan_disagree_pixels']} of "
          f"{cmp_['pixels']} pixels")  # fmt: skip
    print(
        f"  ratio detflow / corgidrp frames/s: {r['ratio_frames_per_s']:.1f} x with the combines, "
        f"{r['ratio_frames_per_s_no_combine']:.1f} x without",
        flush=True,
    )
    return r


# =================================================================================================
# 2. combine of a synthesized L2b stack
# =================================================================================================
NPIX = 1024  # the SCI image area
M16 = np.uint64(0xFFFF)
M10 = np.uint64(0x3FF)
M14 = np.uint64(0x3FFF)
GOLD, MIX1, MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
S30, S27, S31, S16, S20, S32, S48 = (np.uint64(s) for s in (30, 27, 31, 16, 20, 32, 48))
SEED_DATA, SEED_DQ, SEED_HOT = np.uint64(0x1234567), np.uint64(0xABCDEF1), np.uint64(0x5EED5)
JUMP, HOT = np.uint32(4), np.uint32(2048)  # detflow.schema.DQ.JUMP_DET, DQ.HOT
GEN_PASS_PIXEL_FRAMES = 2e9
# corgidrp's combine_images peak per frame: float64 data + err, uint16 dq, n_samples, err**2 and the
# nanmean / masked-median copies (5.1 GB at 100 frames)
CORGI_COMBINE_BYTES_PER_FRAME = 50 * 2**20


@njit(nogil=True, inline="always")
def _mix64(z):
    """splitmix64's finaliser: a counter-based hash, ~1 ns per value."""
    z = z + GOLD
    z = (z ^ (z >> S30)) * MIX1
    z = (z ^ (z >> S27)) * MIX2
    return z ^ (z >> S31)


@njit(nogil=True)
def _scene(y0, x0, ny, nx):
    """Mean electrons (20 + a 300 e- Gaussian spot), their sigma (ENF^2 = 2, 1 e- read noise after the
    gain), hot pixels (~1/16384) of a tile."""
    lam, sig = np.empty((ny, nx)), np.empty((ny, nx))
    hot = np.empty((ny, nx), dtype=np.bool_)
    for i in range(ny):
        for j in range(nx):
            y, x = y0 + i, x0 + j
            v = 20.0 + 300.0 * math.exp(-((y - 500.0) ** 2 + (x - 520.0) ** 2) / (2 * 40.0**2))
            lam[i, j], sig[i, j] = v, math.sqrt(2.0 * v + 1.0)
            hot[i, j] = (_mix64(np.uint64(y * NPIX + x) ^ SEED_HOT) & M14) == 0
    return lam, sig, hot


@njit(nogil=True)
def gen_data(f0, y0, x0, out):
    """``out[f, i, j]`` = electrons of frame f0+f, pixel (y0+i, x0+j); NaN at hot pixels."""
    nf, ny, nx = out.shape
    lam, sig, hot = _scene(y0, x0, ny, nx)
    for f in range(nf):
        base = np.uint64(f0 + f) << S20
        for i in range(ny):
            row = base | np.uint64((y0 + i) * NPIX + x0)
            for j in range(nx):
                if hot[i, j]:
                    out[f, i, j] = np.nan
                    continue
                h = _mix64((row + np.uint64(j)) ^ SEED_DATA)
                s = float(h & M16) + float((h >> S16) & M16) + float((h >> S32) & M16) + float(h >> S48)
                out[f, i, j] = lam[i, j] + sig[i, j] * (s * (1.0 / 65536.0) - 2.0) * 1.7320508075688772


@njit(nogil=True)
def gen_err(f0, y0, x0, out):
    nf, ny, nx = out.shape
    _, sig, _ = _scene(y0, x0, ny, nx)
    for f in range(nf):
        out[f] = sig


@njit(nogil=True)
def gen_dq(f0, y0, x0, out):
    """JUMP_DET on ~1/1024 of the pixel-frames, HOT on the hot pixels in every frame."""
    nf, ny, nx = out.shape
    _, _, hot = _scene(y0, x0, ny, nx)
    for f in range(nf):
        base = np.uint64(f0 + f) << S20
        for i in range(ny):
            row = base | np.uint64((y0 + i) * NPIX + x0)
            for j in range(nx):
                v = np.uint32(0)
                if (_mix64((row + np.uint64(j)) ^ SEED_DQ) & M10) == 0:
                    v |= JUMP
                if hot[i, j]:
                    v |= HOT
                out[f, i, j] = v


def rejected_flags(n: int) -> np.ndarray:
    """Every 1000th frame (999, 1999, ...) is rejected (frame selection)."""
    return ((np.arange(n) % 1000) == 999).astype(np.uint8)


def _gen_block(gen, dtype, block_info=None):
    info = block_info[None]
    (f0, _), (y0, _), (x0, _) = info["array-location"]
    out = np.empty(info["chunk-shape"], dtype=dtype)
    gen(f0, y0, x0, out)
    return out


def synthetic_l2b(n: int, tile: int, rows: int = NPIX):
    """A lazy L2b stack of ``n`` frames (the first ``rows`` rows of the 1024x1024 image), chunks
    (n, tile, tile), generated inside the tasks."""
    import dask.array as da
    import xarray as xr

    chunks = ((n,), (tile,) * (rows // tile), (tile,) * (NPIX // tile))
    arrays = {}
    for name, gen, dtype in (("data", gen_data, np.float32), ("err", gen_err, np.float32), ("dq", gen_dq, np.uint32)):
        arrays[name] = (("frame", "y", "x"), da.map_blocks(_gen_block, gen, dtype, chunks=chunks, dtype=dtype,
                                                           meta=np.empty((0, 0, 0), dtype), name=f"synth_{name}-{n}-{tile}"))  # fmt: skip
    arrays["rejected"] = (("frame",), rejected_flags(n))
    ds = xr.Dataset(arrays, coords={"y": np.arange(rows), "x": np.arange(NPIX)})
    ds["data"].attrs["units"] = ds["err"].attrs["units"] = "electron"
    return ds


CORGI_COMBINE_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    import bench_excam as b
    a = json.loads(sys.argv[1])
    from corgidrp.combine import combine_images
    import corgidrp
    n = a["n"]
    t0 = time.perf_counter()
    data = np.empty((n, 1024, 1024))  # float64: corgidrp's L2b data and err in memory
    b.gen_data(0, 0, 0, data)
    err = np.empty((n, 1, 1024, 1024))
    b.gen_err(0, 0, 0, err[:, 0])
    dq32 = np.empty((n, 1024, 1024), dtype=np.uint32)
    b.gen_dq(0, 0, 0, dq32)
    dq = (dq32 != 0).astype(corgidrp.dq_dtype)  # any flag is bad in combine_images; corgidrp DQ dtype
    del dq32
    t_gen = time.perf_counter() - t0
    rss_inputs = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out, times, peaks = {}, {}, {}
    for collapse in ("mean", "median"):
        t = time.perf_counter()
        d, e, q, _ = combine_images(data, err, dq, collapse, num_frames_scaling=False)
        times[collapse] = time.perf_counter() - t
        peaks[collapse] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out[collapse] = (d.astype(np.float32), e[0].astype(np.float32))
    np.savez(a["result"], **{f"{k}_{v}": out[k][i] for k in out for i, v in enumerate(("data", "err"))})
    print(json.dumps({"n": n, "gen_s": t_gen, "mean_s": times["mean"], "median_s": times["median"],
                      "rss_inputs": rss_inputs, "peak_rss_after": peaks, "peak_rss": max(peaks.values()),
                      "dtypes": [str(data.dtype), str(err.dtype), str(dq.dtype)]}))
""")


def fresh_workers(client, timeout: float = 180.0) -> None:
    """Restart the workers (their nannies start new processes) and wait until as many are back. A
    restart once timed out at the default timeout while the new worker was still importing."""
    n = len(client.scheduler_info()["workers"])
    try:
        client.restart(timeout=timeout)
    except TimeoutError:
        client.wait_for_workers(n, timeout=timeout)


def _combine_once(client, n: int, store: Path, write: bool = True, rows: int = NPIX, task_mb: int = 256) -> dict:
    """Generation-only pass, then the timed combine of ``n`` synthesized frames into ``store``. With
    ``rows`` < 1024 only the first rows of the image are combined (same tile, same tasks, fewer of them)
    and the times are scaled to the whole image (``measured_s`` keeps the measured one)."""
    from detflow.instruments.roman_excam_plan import combine_tile
    from detflow.io.store import StoreWriter
    from detflow.steps.excam import combine

    tile = combine_tile(n, NPIX, NPIX, task_mb)
    fresh_workers(client)  # memory figures of one size do not carry the last one's heap
    warm = synthetic_l2b(16, 256)
    client.compute([x["data"] for x in combine(warm)] + [warm["dq"].sum(), warm["err"].sum()], sync=True)
    if rows % tile:
        raise SystemExit(f"--combine-rows {rows} is not a multiple of the combine tile {tile} at {n} frames")
    ds = synthetic_l2b(n, tile, rows)
    # the generation alone (generate and sum), on the first rows only for large stacks (at most ~2e9
    # pixel-frames: 1/8 of the image at 25,000 frames), scaled to the whole image
    grows = min(rows, tile * math.ceil(NPIX * GEN_PASS_PIXEL_FRAMES / (n * NPIX * NPIX) / tile))
    part = ds.isel(y=slice(0, grows))
    gen = timed(client, lambda: client.compute([part["data"].data.sum(), part["err"].data.sum(),
                                                part["dq"].data.sum(dtype=np.uint64)], sync=True))  # fmt: skip
    gen.update({"rows": grows, "measured_s": gen["s"], "s": gen["s"] * NPIX / grows})
    shutil.rmtree(store, ignore_errors=True)

    def go():
        mean, median = combine(ds)
        if not write:  # computed into the client's memory (8 maps of 4 MB), no store
            client.compute([mean, median], sync=True)
            return
        with StoreWriter(store) as w:
            client.compute(w.add_all({"mean_comb": mean, "median_comb": median}), sync=True)
            w.commit()

    r = timed(client, go)
    r.update({"rows": rows, "measured_s": r["s"], "s": r["s"] * NPIX / rows})
    r.update({"frames": n, "tile": tile, "frames_per_s": n / r["s"], "gen_only": gen, "written": write,
              "pixel_frames_per_s": n * NPIX * NPIX / r["s"]})  # fmt: skip
    part = "" if rows == NPIX else f" (rows 0:{rows} in {r['measured_s']:.1f} s, scaled)"
    gscaled = "" if gen["rows"] == NPIX else f" (scaled from rows 0:{gen['rows']})"
    print(f"  detflow combine {n:6d} frames, tile {tile:3d}: {r['s']:7.1f} s{part} ({r['frames_per_s']:7.1f} frames/s), peak RSS "
          f"{r['peak_rss'] / GIB:5.2f} GiB (worker {r['peak_rss_worker'] / GIB:.2f}, before {r['rss_before'] / GIB:.2f}); "
          f"generating alone {gen['s']:.1f} s{gscaled}; {r['n_tasks']} tasks   [others: {r['other_cores']:.2f} cores]", flush=True)  # fmt: skip
    return r


def combine_bench(args, client) -> dict:
    from detflow.io.store import open_store

    sizes = [int(s) for s in str(args.combine_frames).split(",") if s]
    corgi_sizes = [] if args.skip_corgidrp else [int(s) for s in str(args.corgi_combine_frames).split(",") if s]
    print(
        f"mean + median combine of synthesized 1024x1024 L2b stacks ({', '.join(map(str, sizes))} frames):", flush=True
    )
    res = {"detflow": [], "corgidrp": []}
    for n in sizes:
        store = args.out / f"excam_combine_{n}.zarr"
        res["detflow"].append(_combine_once(client, n, store, write=not args.no_combine_write, rows=args.combine_rows))
        shutil.rmtree(store, ignore_errors=True)
    for n in corgi_sizes:
        need = CORGI_COMBINE_BYTES_PER_FRAME * n + GIB
        avail = psutil.virtual_memory().available
        if need > 0.85 * avail:
            print(f"  corgidrp combine_images {n} frames skipped: it needs ~{need / GIB:.0f} GiB (measured ~50 MB per "
                  f"frame at its median), {avail / GIB:.0f} GiB available", flush=True)  # fmt: skip
            res["corgidrp"].append({"n": n, "skipped": f"needs ~{need / GIB:.0f} GiB, {avail / GIB:.0f} GiB available"})
            continue
        store = args.out / f"excam_combine_{n}.zarr"
        ours = _combine_once(client, n, store)
        tree = open_store(store)
        got = {f"{k}_{v}": np.asarray(tree[f"{k}_comb"][v].values) for k in ("mean", "median") for v in ("data", "err")}
        shutil.rmtree(store, ignore_errors=True)
        home = Path(tempfile.mkdtemp(prefix="corgidrp-home-"))
        result = Path(tempfile.mkdtemp(prefix="corgidrp-comb-", dir=args.out)) / "result.npz"
        t0 = time.perf_counter()
        c = run_child(CORGI_COMBINE_CHILD, {"n": n, "result": str(result)}, home)
        c["wall_s"] = time.perf_counter() - t0
        theirs = dict(np.load(result))
        shutil.rmtree(result.parent, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        c["s"] = c["mean_s"] + c["median_s"]
        c["detflow"] = ours
        c["ratio_time_per_frame"] = (c["s"] / n) / (ours["s"] / n)
        c["compare_max_abs_diff"] = {k: float(np.nanmax(np.abs(got[k] - theirs[k]))) for k in got}
        c["compare_nan_disagree"] = {k: int((np.isnan(got[k]) != np.isnan(theirs[k])).sum()) for k in got}
        res["corgidrp"].append(c)
        print(f"  corgidrp combine_images {n:5d} frames: mean {c['mean_s']:.1f} s + median {c['median_s']:.1f} s = "
              f"{c['s']:.1f} s, peak RSS {c['peak_rss'] / GIB:.2f} GiB (its float64 stack alone {c['rss_inputs'] / GIB:.2f}); "
              f"detflow same frames {ours['s']:.1f} s -> {c['ratio_time_per_frame']:.1f} x; results agree to "
              f"{max(c['compare_max_abs_diff'].values()):.2g} e- (NaN pattern differs at "
              f"{sum(c['compare_nan_disagree'].values())} pixels)", flush=True)  # fmt: skip
    return res


# =================================================================================================
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--frames", type=int, default=None, help=f"L1 frames through detflow (default {DEFAULTS['frames']})"
    )
    ap.add_argument(
        "--corgi-frames",
        type=int,
        default=None,
        help=f"the first M of them through corgidrp (default {DEFAULTS['corgi_frames']})",
    )
    ap.add_argument(
        "--combine-frames",
        default=None,
        help=f"comma-separated stack sizes for detflow's combine (default {DEFAULTS['combine_frames']})",
    )
    ap.add_argument("--corgi-combine-frames", default=None,
                    help=f"stack sizes for corgidrp's combine_images, float64 in RAM: ~50 MB per frame at its peak, "
                         f"so ~300 frames at most on 24 GiB "
                         f"(default {DEFAULTS['corgi_combine_frames']})")  # fmt: skip
    ap.add_argument(
        "--full", action="store_true", help="the issue's sizes: " + ", ".join(f"{k}={v}" for k, v in FULL.items())
    )
    ap.add_argument("--skip-l2b", action="store_true")
    ap.add_argument("--skip-combine", action="store_true")
    ap.add_argument("--skip-corgidrp", action="store_true")
    ap.add_argument("--combine-rows", type=int, default=NPIX,
                    help="combine only the first rows of the image (a multiple of the tile) and scale the times to "
                         "the whole image: per-task memory is unchanged (25,000 frames on the whole image take "
                         "~30 min on 2 cores)")  # fmt: skip
    ap.add_argument(
        "--no-combine-write",
        action="store_true",
        help="compute the --combine-frames results without writing them to a store",
    )
    ap.add_argument("--keep-sim", action="store_true",
                    help=f"keep the simulated L1 frames after a run of more than {DEFAULTS['frames']} frames (smaller "
                         f"simulations are kept, as bench_wfi keeps its exposure)")  # fmt: skip
    ap.add_argument("--workers", type=int, default=1, help="worker processes")
    ap.add_argument("--threads", type=int, default=2, help="threads per worker")
    ap.add_argument("--out", type=Path, default=HERE / "output")
    args = ap.parse_args(argv)
    for k, v in DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, FULL[k] if args.full else v)
    code_version = git_version()
    args.out.mkdir(parents=True, exist_ok=True)
    if (
        shutil.which("pgrep")
        and subprocess.run(["pgrep", "-f", "pytest"], capture_output=True, check=False).stdout.strip()
    ):
        print("note: a pytest run is active on this machine: the figures below share the cores with it", flush=True)

    from detflow.instruments.base import ClusterConfig
    from detflow.runtime.cluster import get_client

    # a fresh checksum cache: the warm-up hashes the references (as a campaign's first frames do), the
    # timed run hashes its own inputs (every frame of a campaign is new)
    os.environ["DETFLOW_CHECKSUM_CACHE"] = tempfile.mkdtemp(prefix="detflow-bench-sums-")
    res = {"workers": args.workers, "threads": args.threads, "git": code_version}
    t_all = time.perf_counter()
    cfg = ClusterConfig(n_workers=args.workers, threads_per_worker=args.threads, dashboard_address="127.0.0.1:0")
    with get_client(cfg) as client:
        if not args.skip_l2b:
            res["l2b"] = l2b_bench(args, client)
            if args.frames > DEFAULTS["frames"] and not args.keep_sim:
                shutil.rmtree(args.out / "excam_sim", ignore_errors=True)
        if not args.skip_combine:
            res["combine"] = combine_bench(args, client)
    res["total_s"] = time.perf_counter() - t_all
    res["machine"] = f"{platform.node()} {platform.machine()} {os.cpu_count()} cores " \
                     f"{psutil.virtual_memory().total / GIB:.0f} GiB"  # fmt: skip
    res["date"] = time.strftime("%Y-%m-%d %H:%M %Z")
    res["command"] = "python bench/bench_excam.py " + " ".join(argv if argv is not None else sys.argv[1:])

    print(f"\nRoman EXCAM, {args.workers} worker process(es) x {args.threads} threads, {res['total_s']:.0f} s in all")
    if "l2b" in res:
        r = res["l2b"]
        r0 = r["no_combine"]
        print(f"  L1 -> L2b (+ l2a/l2b store, mean/median combines), {r['frames']} frames: detflow "
              f"{r['frames_per_s']:.2f} frames/s, peak RSS {r['peak_rss'] / GIB:.2f} GiB (without the combines "
              f"{r0['frames_per_s']:.2f} frames/s, {r0['peak_rss'] / GIB:.2f} GiB)", end="")  # fmt: skip
        if "corgidrp" in r:
            c = r["corgidrp"]
            print(f"; corgidrp ({c['frames']} frames) {c['frames_per_s']:.3f} frames/s, {c['peak_rss'] / GIB:.2f} GiB;"
                  f" ratio {r['ratio_frames_per_s']:.1f} x ({r['ratio_frames_per_s_no_combine']:.1f} x without the combines)")  # fmt: skip
        else:
            print()
    if "combine" in res:
        for r in res["combine"]["detflow"]:
            print(f"  combine {r['frames']:6d} frames: {r['s']:7.1f} s, {r['frames_per_s']:7.1f} frames/s, peak RSS "
                  f"{r['peak_rss'] / GIB:.2f} GiB, tile {r['tile']}, generating alone {r['gen_only']['s']:.1f} s"
                  + ("" if r["rows"] == NPIX else f" (measured on rows 0:{r['rows']}, times scaled)"))  # fmt: skip
        for c in res["combine"]["corgidrp"]:
            if "skipped" in c:
                print(f"  corgidrp combine_images {c['n']} frames: skipped ({c['skipped']})")
                continue
            print(f"  corgidrp combine_images {c['n']} frames: {c['s']:.1f} s, peak RSS {c['peak_rss'] / GIB:.2f} GiB; "
                  f"detflow {c['detflow']['s']:.1f} s, {c['detflow']['peak_rss'] / GIB:.2f} GiB -> {c['ratio_time_per_frame']:.1f} x")  # fmt: skip
    tag = ("_l2b" + str(args.frames) if not args.skip_l2b else "") + \
          ("_comb" + str(args.combine_frames).split(",")[-1] if not args.skip_combine else "") + \
          (f"_rows{args.combine_rows}" if args.combine_rows != NPIX and not args.skip_combine else "")  # fmt: skip
    (args.out / f"bench_excam{tag}.json").write_text(json.dumps(res, indent=1, default=str))
    return res


if __name__ == "__main__":
    main()
