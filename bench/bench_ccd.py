"""Benchmark: plain CCD frames, detflow ``pipeline: ccd`` against ccdproc 2.5.1, same run, same frames.

``--frames`` simulated science frames (``detflow.sim.ccd``: ``--size`` x ``--size`` pixels plus a 32-column
serial overscan, uint16 FITS) through the same work in two child processes, one after the other: read,
overscan (median per row), trim, sigma-clipped (3 sigma, median/std, one iteration) median combine.

* ccdproc: ``CCDData.read``, ``subtract_overscan``, ``trim_image`` per frame, ``Combiner.sigma_clipping``,
  ``median_combine`` (the whole stack in memory, as ccdproc holds it);
* detflow: ``detflow.run`` of the job on a LocalCluster of 1 worker x 2 threads in the child's own process
  (``processes=False``: the child's peak RSS is all of it), writing the zarr store (``ccd`` and ``combined``).

Wall time and peak RSS (``ru_maxrss``) of each child, their ratios, and the largest difference of the
combined frames. Usage: ``python bench/bench_ccd.py [--size 2048] [--frames 20]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CCDPROC = """
import json, resource, sys, time
import numpy as np, ccdproc
from astropy.nddata import CCDData
p = json.loads(sys.argv[1])
t0 = time.perf_counter()
ccds = [ccdproc.trim_image(ccdproc.subtract_overscan(CCDData.read(f, unit="adu"), fits_section=p["biassec"],
        median=True, overscan_axis=1), fits_section=p["trimsec"]) for f in p["files"]]
c = ccdproc.Combiner(ccds)
c.sigma_clipping(low_thresh=3, high_thresh=3, func="median", dev_func="std")
out = c.median_combine()
dt = time.perf_counter() - t0
np.save(p["npy"], out.data)
print(json.dumps({"s": dt, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

DETFLOW = """
import json, resource, sys, time
from distributed import Client, LocalCluster
import detflow
p = json.loads(sys.argv[1])
with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as lc, Client(lc) as c:
    t0 = time.perf_counter()
    detflow.run(p["job"], c, progress=False)
    dt = time.perf_counter() - t0
print(json.dumps({"s": dt, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def child(code: str, payload: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", code, json.dumps(payload)], capture_output=True, text=True, check=False,
                       env=dict(os.environ))  # fmt: skip
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--frames", type=int, default=20)
    args = ap.parse_args(argv)
    import numpy as np
    import xarray as xr

    from detflow.sim.ccd import CcdSimConfig, simulate_ccd

    with tempfile.TemporaryDirectory(prefix="bench_ccd_") as tmp:
        tmp = Path(tmp)
        cfg = CcdSimConfig(ny=args.size, nx=args.size, overscan=32, n_bias=0, n_dark=0, n_flat=0,
                           n_science=args.frames)  # fmt: skip
        files = [str(f) for f in simulate_ccd(tmp / "raw", cfg)["files"]]
        biassec = f"[{cfg.nx + 1}:{cfg.nx + cfg.overscan},1:{cfg.ny}]"
        trimsec = f"[1:{cfg.nx},1:{cfg.ny}]"
        ref = child(CCDPROC, {"files": files, "biassec": biassec, "trimsec": trimsec, "npy": str(tmp / "c.npy")})
        job = {"pipeline": "ccd", "input": files, "output": str(tmp / "out.zarr"),
               "overscan": {"method": "median", "model": "per_row"}}  # fmt: skip
        ours = child(DETFLOW, {"job": job})
        got = xr.open_zarr(tmp / "out.zarr", group="combined")["data"].values
        diff = float(np.nanmax(np.abs(got - np.load(tmp / "c.npy"))))
    result = {"size": args.size, "frames": args.frames, "ccdproc": ref, "detflow": ours,
              "time_ratio_ccdproc_over_detflow": ref["s"] / ours["s"],
              "rss_ratio_ccdproc_over_detflow": ref["peak_rss"] / ours["peak_rss"],
              "max_abs_diff_adu": diff}  # fmt: skip
    print(json.dumps(result, indent=1))
    out = Path(__file__).resolve().parent / "output"
    out.mkdir(exist_ok=True)
    (out / f"bench_ccd_{args.size}_{args.frames}.json").write_text(json.dumps(result, indent=1))
    print(
        f"plain CCD {args.size}x{args.size} x {args.frames} frames: detflow {ours['s']:.1f} s, ccdproc {ref['s']:.1f} s "
        f"-> {result['time_ratio_ccdproc_over_detflow']:.2f} x; memory {result['rss_ratio_ccdproc_over_detflow']:.2f} x"
    )
    return result


if __name__ == "__main__":
    main()
