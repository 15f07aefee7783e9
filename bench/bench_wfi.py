"""Benchmark: Roman WFI L1 -> L2 of one exposure, detflow against the stcal steps, same run, same data.

Measures, on this machine, in one invocation:

* detflow ``run`` (dq_init, saturation, linearity, dark, ramp fit + jumps, store written) on an
  embedded LocalCluster: wall time and peak RSS of the whole process tree (client + workers);
* the same steps done by stcal 1.20 in a child process (``flag_saturated_pixels`` +
  ``fit_ramps_casertano(use_jump=True)``, which fits and detects jumps): wall time and peak RSS;
* the ramp-fit kernel alone on one core (pixel-resultants per second);
* the machine's memory bandwidth (numpy copy of 1 GiB), against the cube's bytes / detflow time.

Opt-in, on the same cluster after those runs:

* ``--noise N``: every gen_cal_image step (PIT configuration, SKYORDER 1) without a NOISE block, then
  the same job with noise layers: ``Ra`` x 1..N, ``R``, ``Pbr``, ``Pbr`` x N, ``O``, ``O`` x N and
  ``RaS1, Pbr, O``; wall time, peak RSS of the process tree and (time - base) / base of each. Every
  noise kernel is compiled first on a small simulated exposure, so no run pays numba compiling.
* ``--sca N``: N exposures, one per detector (WFI01..WFIN, copies of the simulated one with
  ``meta.instrument.detector`` rewritten; reference files hard-linked per detector, so no dask task
  and no checksum is shared between detectors), as one job; against N x the warm single exposure (the
  median of three runs: the main warm run, one just before the N-detector job and one just after).

Every timed run also records the CPU that other processes used meanwhile (``other_cores``): the
machine is shared, and a figure taken while someone else computed says so.

Usage: ``python bench/bench_wfi.py [--nside 4096] [--workers 1] [--threads 2] [--skip-stcal] [--full]
[--noise N] [--sca N]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent


class PeakRSS:
    """Sample the RSS of this process and all its children; ``peak`` in bytes."""

    def __init__(self, interval=0.05):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def stop(self):
        self._stop.set()
        self._t.join()

    def __exit__(self, *exc):
        self.stop()


class OtherCPU:
    """CPU used by processes outside this process tree while the block ran, in cores (0 = a quiet machine).
    The machine is shared: a figure taken while others computed says so in its ``other_cores``."""

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    @staticmethod
    def _ours() -> float:
        me, total = psutil.Process(), 0.0
        for p in [me, *me.children(recursive=True)]:
            try:
                c = p.cpu_times()
                total += c.user + c.system
            except psutil.Error:
                pass
        return total

    @staticmethod
    def _iowait() -> float:
        return getattr(psutil.cpu_times(), "iowait", 0.0)

    def __enter__(self):
        self._t0, self._b0, self._o0, self._w0 = time.perf_counter(), self._busy(), self._ours(), self._iowait()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._t0
        ours = self._ours() - self._o0
        self.ours_cores = ours / wall
        self.other_cores = max(0.0, (self._busy() - self._b0) - ours) / wall
        self.iowait_cores = (self._iowait() - self._w0) / wall


def tree_rss() -> int:
    """RSS of this process and all its children now, bytes."""
    me, total = psutil.Process(), 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def memory_bandwidth(nbytes=2**30, repeats=3) -> float:
    """Copy bandwidth in bytes/s (read + write counted)."""
    a = np.ones(nbytes // 8)
    b = np.empty_like(a)
    best = 1e9
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best


def kernel_throughput(nread=8, npix=4096 * 512, detect=True) -> float:
    """Pixel-resultants per second of the ramp-fit kernel on one core (numba, no dask)."""
    from detflow.kernels import ramp as kramp
    from detflow.schema import DQ

    rp = [[1], [2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19, 20, 21, 22, 23],
          [24, 25, 26, 27, 28, 29, 30, 31], [32, 33, 34, 35, 36, 37, 38, 39]][:nread]  # fmt: skip
    rng = np.random.default_rng(0)
    tb, _, _ = kramp.resultant_times(rp, 3.04)
    ny, nx = npix // 4096, 4096
    R = (100 + rng.uniform(0, 50, (ny, nx))[..., None] * tb + rng.normal(0, 6, (ny, nx, nread))).astype(np.float32)
    gdq = np.zeros((ny, nx, nread), np.uint32)
    gdq[..., 0] = 1
    maps = [np.zeros((ny, nx), np.uint32), np.full((ny, nx), 1.8, np.float32), np.full((ny, nx), 6.5, np.float32)]
    t = kramp.ramp_tables(rp, 3.04, 0.4 / 1.8 / 6.5**2, 1)
    outs = [np.empty((ny, nx), d) for d in (np.float32, np.float32, np.float32, np.uint32)]
    args = (R, gdq, *maps, t.weights, t.coef_poisson, t.coef_read, t.pair_start, t.pair_i, t.pair_j, t.pair_inv_dt, t.pair_poisson, t.pair_read,
            kramp.ramp_params(1, detect=detect), kramp.dq_flags(DQ.SATURATED, DQ.DO_NOT_USE, DQ.JUMP_DET,
            DQ.REFERENCE_PIXEL, DQ.NO_GAIN_VALUE, DQ.UNRELIABLE_ERROR), *outs)  # fmt: skip
    best = 1e9
    for _ in range(4):  # the first call compiles
        t0 = time.perf_counter()
        kramp.fit_ramps(*args)
        best = min(best, time.perf_counter() - t0)
    return npix * nread / best


STCAL_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import asdf, numpy as np
    from stcal.saturation.saturation import flag_saturated_pixels
    from stcal.ramp_fitting.ols_cas22_fit import fit_ramps_casertano
    l1, caldir = sys.argv[1], json.loads(sys.argv[2])
    t0 = time.perf_counter()
    with asdf.open(l1) as af:
        data = np.asarray(af["roman"]["data"], dtype=np.float32)
        rp = [list(map(int, g)) for g in af["roman"]["meta"]["exposure"]["read_pattern"]]
        ft = float(af["roman"]["meta"]["exposure"]["frame_time"])
    with asdf.open(caldir["saturation"]) as f:
        thr = np.array(f["roman"]["data"], dtype=np.float32); sdq = np.array(f["roman"]["dq"], dtype=np.uint32)
    with asdf.open(caldir["read"]) as f:
        rn = np.array(f["roman"]["data"], dtype=np.float32)
    with asdf.open(caldir["gain"]) as f:
        gain = np.array(f["roman"]["data"], dtype=np.float32)
    t_read = time.perf_counter() - t0
    flags = {"DO_NOT_USE": 1, "SATURATED": 2, "AD_FLOOR": 64, "NO_SAT_CHECK": 2**21}
    t0 = time.perf_counter()
    gdq = np.zeros((1,) + data.shape, np.uint32)
    pdq = np.zeros((1, 1) + data.shape[1:], np.uint32)
    gdq, pdq, _ = flag_saturated_pixels(data[None, 1:], gdq[:, 1:], pdq, thr, sdq, 65535, flags,
                                        n_pix_grow_sat=1, read_pattern=rp[1:])
    t_sat = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = fit_ramps_casertano(data[1:] * gain[None], gdq[0], rn * gain, ft, rp[1:], use_jump=True)
    t_fit = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"read_s": t_read, "saturation_s": t_sat, "fit_jump_s": t_fit, "peak_rss": peak}))
""")


NOISE_SEED = 42


def noise_layer_sets(n: int) -> list[list[str]]:
    """The noise configurations of ``--noise N`` (after the run without a NOISE block)."""
    sets = [["Ra"] * k for k in range(1, n + 1)] + [["R"], ["Pbr"]]
    sets += [["Pbr"] * n] if n > 1 else []
    sets += [["O"]] + ([["O"] * n] if n > 1 else [])
    return sets + [["RaS1", "Pbr", "O"]]


def pit_config(simdir: Path, out: Path, layers: list[str] | None, skyorder: int = 1) -> dict:
    """The simulator's gen_cal_image.yaml with SKYORDER and (``layers``) a NOISE block: every step on."""
    import yaml

    raw = yaml.safe_load((simdir / "gen_cal_image.yaml").read_text())
    raw.update({"OUT": str(out), "SKYORDER": skyorder})
    if layers:
        raw["NOISE"] = {"LAYER": list(layers), "SEED": NOISE_SEED}
    return raw


# task names of the calibration kernels: how many times each ran tells whether a product recomputed
# the chain of another (one task per row tile and exposure is the expected count)
KERNEL_TASKS = ("linearity_block", "ramp_block", "ipc")


def _task_name(key) -> str:
    name = key[0] if isinstance(key, tuple) else str(key)
    return "-".join(t for t in name.split("-") if not (len(t) >= 8 and all(c in "0123456789abcdef" for c in t)))


def timed_run(job, client) -> dict:
    """One ``run`` on a running cluster: wall time, peak RSS of the process tree, RSS before it, and from
    the task stream the worker-seconds of computing and the number of times each calibration kernel ran."""
    from distributed import get_task_stream

    from detflow.runtime.run import run

    shutil.rmtree(job.store, ignore_errors=True)
    rss0 = tree_rss()
    with PeakRSS() as mem, OtherCPU() as cpu, get_task_stream(client) as ts:
        t0 = time.perf_counter()
        run(job, client=client, progress=False)
        dt = time.perf_counter() - t0
    busy, counts = {}, dict.fromkeys(KERNEL_TASKS, 0)
    for t in ts.data:
        name = _task_name(t["key"])
        busy[name] = busy.get(name, 0.0) + sum(
            x["stop"] - x["start"] for x in t["startstops"] if x["action"] == "compute"
        )
        for k in KERNEL_TASKS:
            counts[k] += name.startswith(k)
    top = dict(sorted(busy.items(), key=lambda kv: -kv[1])[:12])
    return {"s": dt, "peak_rss": mem.peak, "rss_before": rss0, "our_cores": cpu.ours_cores,
            "other_cores": cpu.other_cores, "iowait_cores": cpu.iowait_cores, "task_s": sum(busy.values()),
            "kernel_task_counts": counts,
            "top_tasks_s": top}  # fmt: skip


def noise_layer_stats(store: Path) -> dict[str, float]:
    """Robust standard deviation (IQR / 1.349, DN/s) of each noise layer, a sanity check of the output."""
    from detflow.io.store import open_store

    noise = open_store(store)["noise"].to_dataset()["noise"]
    out = {}
    for i, code in enumerate(noise["layer"].values):
        img = np.asarray(noise.isel(frame=0, layer=i).values, dtype=np.float64)
        q25, q75 = np.nanpercentile(img, [25, 75])
        out[f"{i}:{code}"] = float((q75 - q25) / 1.34896)
    return out


def noise_bench(args, simdir: Path, client) -> dict:
    """``--noise N``: the full chain (SKYORDER 1) without, then with noise layers, on ``client``."""
    from detflow.runtime.job import load_job
    from detflow.sim.wfi import SimConfig, simulate

    gib = 2**30
    work = args.out / f"wfi_noise_{args.nside}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sets = noise_layer_sets(args.noise)
    # compile every step and noise kernel on a small exposure first (numba compiles per worker process,
    # once per type signature): the timed runs then measure work, not compiling
    small = args.out / "wfi_sim_256"
    if not (small / "gen_cal_image.yaml").exists():
        shutil.rmtree(small, ignore_errors=True)
        simulate(small, SimConfig(nside=256, seed=7))
    t0 = time.perf_counter()
    codes = sorted({c for layers in sets for c in layers})
    timed_run(load_job(pit_config(small, work / "warmup.zarr", codes)), client)
    shutil.rmtree(work / "warmup.zarr", ignore_errors=True)
    print(f"noise kernels compiled on a 256x256 exposure ({', '.join(codes)}) in {time.perf_counter() - t0:.1f} s",
          flush=True)  # fmt: skip

    def one(label: str, layers: list[str] | None) -> dict:
        store = work / f"{label}.zarr"
        try:
            r = timed_run(load_job(pit_config(simdir, store, layers)), client)
        except Exception as exc:  # noqa: BLE001 - report the failing configuration, measure the others
            import traceback

            tb = traceback.format_exc()
            print(f"  noise run {layers} FAILED: {type(exc).__name__}: {exc}\n{tb}", flush=True)
            shutil.rmtree(store, ignore_errors=True)
            return {"layers": layers or [], "error": f"{type(exc).__name__}: {exc}", "traceback": tb}
        r["layers"] = layers or []
        if layers:
            r["layer_robust_std_dn_s"] = noise_layer_stats(store)
        shutil.rmtree(store, ignore_errors=True)
        print(f"  {layers or 'no NOISE block'!s:28s} {r['s']:7.1f} s   peak RSS {r['peak_rss'] / gib:5.2f} GiB "
              f"(before {r['rss_before'] / gib:4.2f})   task-s {r['task_s']:5.1f}   linearity tasks "
              f"{r['kernel_task_counts']['linearity_block']}   [others: {r['other_cores']:.2f} cores]", flush=True)  # fmt: skip
        return r

    print(
        f"noise layers, {args.nside}x{args.nside}, every gen_cal_image step, SKYORDER 1, seed {NOISE_SEED}:", flush=True
    )
    base0 = one("base", None)
    runs = [one("_".join(layers), layers) for layers in sets]
    base1 = one("base_again", None)
    # the faster of the two: on a shared machine a slow base run means another process took the cores
    # (each run records that in "other_cores"), never that the chain got cheaper
    bases = [b["s"] for b in (base0, base1) if "s" in b]
    base = float(min(bases))
    for r in runs:
        if "s" in r:
            r["rel_to_base"] = (r["s"] - base) / base
            r["rel_to_base_per_layer"] = r["rel_to_base"] / len(r["layers"])
            r["extra_peak_rss"] = r["peak_rss"] - max(b["peak_rss"] for b in (base0, base1) if "peak_rss" in b)
    return {"base": [base0, base1], "base_s": base, "runs": runs, "seed": NOISE_SEED, "skyorder": 1,
            "warmup": "every kernel compiled first on a 256x256 simulated exposure, same cluster"}  # fmt: skip


def sca_inputs(simdir: Path, out: Path, n: int) -> tuple[list[Path], dict[str, str]]:
    """``n`` L1 files WFI01..WFIn (copies of the simulated exposure, detector rewritten) and a CALDIR
    template with ``{detector}``: each detector's reference files are hard links to the simulated ones,
    so they have their own paths (own dask keys, own checksums) but share the page cache."""
    import asdf
    import yaml

    root = out / f"wfi_sca_{simdir.name.removeprefix('wfi_sim_')}"
    src = min((simdir / "l1").glob("*.asdf"))
    caldir = yaml.safe_load((simdir / "gen_cal_image.yaml").read_text())["CALDIR"]
    files = []
    for i in range(1, n + 1):
        det = f"WFI{i:02d}"
        l1 = root / "l1" / f"{det}.asdf"
        if not l1.exists() or l1.stat().st_mtime < src.stat().st_mtime:
            l1.parent.mkdir(parents=True, exist_ok=True)
            tmp = l1.with_name(l1.name + ".partial")
            shutil.copyfile(src, tmp)
            with asdf.open(tmp, mode="rw") as af:
                af.tree["roman"]["meta"]["instrument"]["detector"] = det
                af.update()
            tmp.replace(l1)
        files.append(l1)
        for ref in caldir.values():
            dst = root / "caldir" / det / Path(ref).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.exists() and os.path.samefile(dst, ref):
                continue
            dst.unlink(missing_ok=True)
            try:
                os.link(ref, dst)
            except OSError:
                shutil.copyfile(ref, dst)
    return files, {k: str(root / "caldir" / "{detector}" / Path(v).name) for k, v in caldir.items()}


def sca_bench(args, simdir: Path, job, client, t_single: float) -> dict:
    """``--sca N``: N detectors' exposures as one job on ``client``, against N x the single exposure."""
    from detflow.io.caldir import sha256

    gib = 2**30
    t0 = time.perf_counter()
    files, caldir = sca_inputs(simdir, args.out, args.sca)
    t_prep = time.perf_counter() - t0
    store = args.out / f"wfi_l2_{args.nside}_sca{args.sca}{'_full' if args.full else ''}.zarr"
    sca_job = job.model_copy(update={"input": [str(f) for f in files], "caldir": caldir, "output": store})
    # the warm single exposure finds its checksums remembered; give the N detectors' files the same
    # start (in a campaign references are hashed once; hashing is timed here on its own)
    paths = [str(f) for f in files] + [v.replace("{detector}", f"WFI{i:02d}") for i in range(1, args.sca + 1)
                                       for v in caldir.values()]  # fmt: skip
    t0 = time.perf_counter()
    client.gather(client.map(sha256, paths, pure=False))
    t_hash = time.perf_counter() - t0
    print(f"{args.sca} detectors' inputs ready in {t_prep:.1f} s; SHA-256 of their {len(paths)} files "
          f"({sum(os.path.getsize(p) for p in paths) / 1e9:.1f} GB) in {t_hash:.1f} s (not in the run time)", flush=True)  # fmt: skip
    # the single exposure again just before and after (the shared VM varies by 10-40% between runs)
    single_job = job.model_copy(update={"output": store.with_name(store.stem + "_single.zarr")})
    singles = [t_single, timed_run(single_job, client)["s"]]
    try:
        r = timed_run(sca_job, client)
    except Exception as exc:  # noqa: BLE001 - reported with its traceback
        import traceback

        tb = traceback.format_exc()
        print(f"  {args.sca}-detector run FAILED: {type(exc).__name__}: {exc}\n{tb}", flush=True)
        return {"n": args.sca, "error": f"{type(exc).__name__}: {exc}", "traceback": tb}
    shutil.rmtree(store, ignore_errors=True)  # ~0.3 GB per detector
    singles.append(timed_run(single_job, client)["s"])
    shutil.rmtree(single_job.store, ignore_errors=True)
    t_single = float(np.median(singles))
    r.update({"n": args.sca, "prep_s": t_prep, "sha256_s": t_hash, "per_exposure_s": r["s"] / args.sca,
              "single_warm_runs_s": singles, "single_warm_s": t_single,
              "ratio_to_n_singles": r["s"] / (args.sca * t_single)})  # fmt: skip
    print(f"  {args.sca} detectors, one job               {r['s']:8.1f} s   peak RSS {r['peak_rss'] / gib:6.2f} GiB "
          f"(before {r['rss_before'] / gib:.2f})   [others: {r['other_cores']:.2f} cores, iowait {r['iowait_cores']:.2f}]")  # fmt: skip
    print(f"  per exposure {r['per_exposure_s']:.1f} s   vs single warm {t_single:.1f} s (median of "
          f"{', '.join(f'{x:.1f}' for x in singles)} s)   -> "
          f"{r['ratio_to_n_singles']:.2f} x of {args.sca} separate warm runs", flush=True)  # fmt: skip
    return r


def git_version() -> str | None:
    """The commit measured, read at start (other work lands in the same checkout while benchmarks run)."""
    git = ["git", "-C", str(HERE.parent)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", "detflow"], capture_output=True, text=True,
                               check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.strip() + (" + uncommitted changes in detflow/" if dirty else "")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nside", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=1, help="worker processes")
    ap.add_argument("--threads", type=int, default=2, help="threads per worker")
    ap.add_argument("--skip-stcal", action="store_true")
    ap.add_argument(
        "--full",
        action="store_true",
        help="every gen_cal_image step (refpix, ipc, flat, second-order sky) instead of the default recipe",
    )
    ap.add_argument(
        "--noise",
        type=int,
        default=0,
        metavar="N",
        help="then the full chain (SKYORDER 1) with noise layers: Ra x 1..N, R, Pbr, O, ... (opt-in, "
        "~10 min at 4096 with N=2)",
    )
    ap.add_argument(
        "--sca",
        type=int,
        default=0,
        metavar="N",
        help="then N detectors' exposures (1..18) as one job, against N x the warm single exposure "
        "(opt-in; with --full ~8 min at 4096 for N=18)",
    )
    ap.add_argument(
        "--no-fuse",
        action="store_true",
        help="job `fuse: false`: linearity, dark and ramp fit as three kernels instead of the one-pass kernel",
    )
    ap.add_argument("--out", type=Path, default=HERE / "output")
    args = ap.parse_args(argv)
    if not 0 <= args.sca <= 18:
        ap.error("--sca takes 1..18 (WFI01..WFI18)")
    if args.noise < 0:
        ap.error("--noise takes N >= 1")
    code_version = git_version()

    from detflow.runtime.job import load_job
    from detflow.runtime.run import run
    from detflow.sim.wfi import SimConfig, simulate

    args.out.mkdir(parents=True, exist_ok=True)
    simdir = args.out / f"wfi_sim_{args.nside}"
    if not (simdir / "gen_cal_image.yaml").exists():
        shutil.rmtree(simdir, ignore_errors=True)
        t0 = time.perf_counter()
        simulate(simdir, SimConfig(nside=args.nside, seed=7))
        print(f"simulated {args.nside}x{args.nside} exposure in {time.perf_counter() - t0:.1f} s", flush=True)
    job = load_job(simdir / "gen_cal_image.yaml")
    if args.full:
        full = ["dq_init", "saturation", "refpix", "linearity", "ipc", "dark_current", "ramp_fit", "flat", "sky"]
        job = job.model_copy(update={"recipe": full, "steps": {**job.steps, "sky": {"order": 2}}})
    else:  # a PIT configuration now means every step; this benchmark's default is the five-step recipe
        from detflow.instruments.roman_wfi import DEFAULT_RECIPE

        job = job.model_copy(update={"recipe": list(DEFAULT_RECIPE)})
    if args.no_fuse:
        job = job.model_copy(update={"fuse": False})
    store = args.out / f"wfi_l2_{args.nside}{'_full' if args.full else ''}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    job = job.model_copy(update={"output": store,
                                 "cluster": job.cluster.model_copy(update={"n_workers": args.workers,
                                                                           "threads_per_worker": args.threads,
                                                                           "dashboard_address": "127.0.0.1:0"})})  # fmt: skip
    l1 = Path(job.input if isinstance(job.input, str) else job.input[0])
    import asdf

    with asdf.open(l1) as af:
        cube_shape = tuple(af["roman"]["data"].shape)
    cube_bytes = int(np.prod(cube_shape)) * 2

    import tempfile

    from detflow.runtime.cluster import get_client

    # a fresh checksum cache: the cold run hashes every input and reference file, the warm run finds
    # them remembered (as every later exposure of a campaign does)
    os.environ["DETFLOW_CHECKSUM_CACHE"] = tempfile.mkdtemp(prefix="detflow-bench-sums-")

    # cold: what one `detflow run` costs (cluster start, numba compiling in each worker, the run);
    # warm: the next exposure on the same cluster (the steady state of a batch of exposures)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        with get_client(job.cluster) as client:
            t_start = time.perf_counter() - t0
            run(job, client=client, progress=False)
            t_cold = time.perf_counter() - t0
            store2 = store.with_name(store.stem + "_warm.zarr")
            shutil.rmtree(store2, ignore_errors=True)
            with OtherCPU() as cpu:
                t0 = time.perf_counter()
                run(job.model_copy(update={"output": store2}), client=client, progress=False)
                t_ours = time.perf_counter() - t0
            mem.stop()  # the figures of the single exposure end here; the opt-in modes sample their own
            noise = noise_bench(args, simdir, client) if args.noise else None
            sca = sca_bench(args, simdir, job, client, t_ours) if args.sca else None
    res = {"nside": args.nside, "fuse": not args.no_fuse, "resultants": cube_shape[0], "workers": args.workers, "threads": args.threads,
           "detflow_s": t_ours,
           "detflow_cold_s": t_cold, "cluster_start_s": t_start, "detflow_peak_rss": mem.peak,
           "warm_other_cores": cpu.other_cores, "warm_iowait_cores": cpu.iowait_cores}  # fmt: skip

    res["kernel_pix_res_per_s_per_core"] = kernel_throughput(nread=cube_shape[0])
    res["kernel_nojump_pix_res_per_s_per_core"] = kernel_throughput(nread=cube_shape[0], detect=False)
    res["mem_bandwidth_Bps"] = memory_bandwidth()
    res["cube_bytes_per_s"] = cube_bytes / t_ours

    if not args.skip_stcal:
        r = subprocess.run([sys.executable, "-c", STCAL_CHILD, str(l1),
                            json.dumps({k: str(v) for k, v in job.caldir.items()})],
                           capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))  # fmt: skip
        if r.returncode != 0:
            print(r.stderr[-3000:])
            raise SystemExit("stcal reference run failed")
        st = json.loads(r.stdout.strip().splitlines()[-1])
        res.update({f"stcal_{k}": v for k, v in st.items()})
        res["stcal_steps_s"] = st["saturation_s"] + st["fit_jump_s"]
        res["speedup_vs_stcal_steps"] = res["stcal_steps_s"] / t_ours

    res["machine"] = f"{platform.node()} {platform.machine()} {os.cpu_count()} cores " \
                     f"{psutil.virtual_memory().total / 2**30:.0f} GiB"  # fmt: skip
    res["date"] = time.strftime("%Y-%m-%d %H:%M %Z")
    res["git"] = code_version
    gib = 2**30
    print(
        f"\nRoman WFI L1 -> L2{' (every step)' if args.full else ''}, {args.nside}x{args.nside}, {cube_shape[0]} resultants, "
        f"{args.workers} worker process(es) x {args.threads} threads"
    )
    print(
        f"  detflow warm (all steps + store)  {t_ours:8.1f} s   peak RSS {mem.peak / gib:6.2f} GiB (client + workers)"
        f"   [other processes used {cpu.other_cores:.2f} of {os.cpu_count()} cores meanwhile, iowait {cpu.iowait_cores:.2f}]"
    )
    print(f"  detflow cold (cluster start {t_start:.1f} s, numba compile, checksums, run) {t_cold:8.1f} s")
    if not args.skip_stcal:
        print(f"  stcal saturation + cas22 fit      {res['stcal_steps_s']:8.1f} s   peak RSS "
              f"{res['stcal_peak_rss'] / gib:6.2f} GiB   (reading the inputs {res['stcal_read_s']:.1f} s, not counted)")  # fmt: skip
        print(f"  speed ratio stcal/detflow warm    {res['speedup_vs_stcal_steps']:8.2f} x   cold "
              f"{res['stcal_steps_s'] / t_cold:.2f} x   memory ratio stcal/detflow {res['stcal_peak_rss'] / mem.peak:5.2f} x")  # fmt: skip
    print(f"  ramp-fit kernel, one core         {res['kernel_pix_res_per_s_per_core']:.3g} pixel-resultants/s with jump "
          f"detection, {res['kernel_nojump_pix_res_per_s_per_core']:.3g} without")  # fmt: skip
    print(f"  cube bytes / detflow warm time    {res['cube_bytes_per_s'] / 1e9:.3f} GB/s  vs memory copy bandwidth "
          f"{res['mem_bandwidth_Bps'] / 1e9:.1f} GB/s")  # fmt: skip
    res["recipe"] = job.resolved_recipe()
    suffix = ("_full" if args.full else "") + (f"_noise{args.noise}" if args.noise else "") + \
             (f"_sca{args.sca}" if args.sca else "") + ("_nofuse" if args.no_fuse else "")  # fmt: skip
    if noise is not None:
        res["noise"] = noise
        base_runs = ", ".join(f"{b['s']:.1f}" for b in noise["base"] if "s" in b)
        print(
            f"\nnoise layers (every step, SKYORDER 1), {args.nside}x{args.nside}; base = no NOISE block, "
            f"{noise['base_s']:.1f} s (the faster of {base_runs} s, before and after the noise runs)"
        )
        print(
            f"  {'layers':28s} {'time':>8s} {'(t-base)/base':>14s} {'per layer':>10s} {'peak RSS':>10s} {'others':>7s}"
        )
        for r in noise["runs"]:
            if "error" in r:
                print(f"  {r['layers']!s:28s} FAILED: {r['error']}")
                continue
            print(f"  {r['layers']!s:28s} {r['s']:6.1f} s {r['rel_to_base']:13.2f}x {r['rel_to_base_per_layer']:9.2f}x "
                  f"{r['peak_rss'] / gib:6.2f} GiB {r['other_cores']:5.2f}c")  # fmt: skip
    if sca is not None:
        res["sca"] = sca
        print(f"\n{args.sca} detectors (copies of the simulated one) as one job, {args.workers} worker process(es) x "
              f"{args.threads} threads")  # fmt: skip
        if "error" in sca:
            print(f"  FAILED: {sca['error']}")
        else:
            print(f"  total {sca['s']:.1f} s, {sca['per_exposure_s']:.1f} s per exposure, peak RSS {sca['peak_rss'] / gib:.2f} GiB;"
                  f" {args.sca} x single warm (median {sca['single_warm_s']:.1f} s) = {args.sca * sca['single_warm_s']:.1f} s"
                  f" -> ratio {sca['ratio_to_n_singles']:.2f}"
                  f"   [others: {sca['other_cores']:.2f} cores]")  # fmt: skip
    (args.out / f"bench_wfi_{args.nside}{suffix}.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
