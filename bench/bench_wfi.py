"""Benchmark: Roman WFI L1 -> L2 of one exposure, detflow against the stcal steps, same run, same data.

Measures, on this machine, in one invocation:

* detflow ``run`` (dq_init, saturation, linearity, dark, ramp fit + jumps, store written) on an
  embedded LocalCluster: wall time and peak RSS of the whole process tree (client + workers);
* the same steps done by stcal 1.20 in a child process (``flag_saturated_pixels`` +
  ``fit_ramps_casertano(use_jump=True)``, which fits and detects jumps): wall time and peak RSS;
* the ramp-fit kernel alone on one core (pixel-resultants per second);
* the machine's memory bandwidth (numpy copy of 1 GiB), against the cube's bytes / detflow time.

Usage: ``python bench/bench_wfi.py [--nside 4096] [--workers 2] [--skip-stcal]``
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

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


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
            kramp.ramp_params(1, detect=detect), *outs)  # fmt: skip
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nside", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=1, help="worker processes")
    ap.add_argument("--threads", type=int, default=2, help="threads per worker")
    ap.add_argument("--skip-stcal", action="store_true")
    ap.add_argument("--full", action="store_true",
                    help="every gen_cal_image step (refpix, ipc, flat, second-order sky) instead of the default recipe")
    ap.add_argument("--out", type=Path, default=HERE / "output")
    args = ap.parse_args(argv)

    from detflow.runtime.config import load_job
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
            t0 = time.perf_counter()
            run(job.model_copy(update={"output": store2}), client=client, progress=False)
            t_ours = time.perf_counter() - t0
    res = {"nside": args.nside, "resultants": cube_shape[0], "workers": args.workers, "threads": args.threads,
           "detflow_s": t_ours,
           "detflow_cold_s": t_cold, "cluster_start_s": t_start, "detflow_peak_rss": mem.peak}  # fmt: skip

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
    gib = 2**30
    print(f"\nRoman WFI L1 -> L2{' (every step)' if args.full else ''}, {args.nside}x{args.nside}, {cube_shape[0]} resultants, "
          f"{args.workers} worker process(es) x {args.threads} threads")
    print(f"  detflow warm (all steps + store)  {t_ours:8.1f} s   peak RSS {mem.peak / gib:6.2f} GiB (client + workers)")
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
    res["recipe"] = job.recipe or "default"
    (args.out / f"bench_wfi_{args.nside}{'_full' if args.full else ''}.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
