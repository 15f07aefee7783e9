"""Benchmark: strong scaling of detflow on 1 and 2 worker processes, the scheduler's cost per task, and the
figures a projection to 100 workers needs (tasks, worker-seconds, data moved between workers).

On this 2-core machine "scaling" means: the same job, the same data, on fresh LocalClusters of
``--shapes`` (default ``1x1,2x1,1x2``: workers x threads), each warmed (detflow imported, kernels compiled)
before anything is timed. The reference is the 1 x 1 run in the same invocation:
speedup = T(1x1) / T(shape) and efficiency = speedup / cores(shape).

1. **WFI batch**: ``--wfi N`` exposures (default 4) as one L1 -> L2 job, the five-step recipe of
   ``bench_wfi.py`` at ``--nside`` (default 4096). The N exposures are copies of the simulated detector
   (``bench_wfi.sca_inputs``: detector rewritten, each with its own hard-linked reference files, so each
   has its own dask keys and checksums). Every file's SHA-256 is computed before the timed runs, as a
   warm exposure of a campaign finds its checksums remembered.
2. **EMCCD combine**: the mean + median combine of ``--combine-frames`` (default 25,000) synthesized
   1024-column L2b frames (``bench_excam.synthetic_l2b``: generated inside the tasks, no disk), over the
   first ``--combine-rows`` rows (default 64: the tile at 25,000 frames is 16, so 4 x 64 = 256 tiles of
   25,000 frames), through ``detflow.steps.excam.combine`` and ``StoreWriter`` into a zarr store, as a
   run writes it. Times are as measured (not scaled to the whole image).
3. **Scheduler cost per task**: ``--tasks M`` (default 20,000) no-op tasks (``client.map``), and an array
   graph of M one-element blocks summed by a tree reduction (``dask.array``), each submitted and gathered;
   wall time / tasks. This is what the scheduler, the client and the comms cost per task when the task
   itself costs nothing.

For each timed run: wall, peak RSS of the process tree, the task stream's worker-seconds and task
count, mean task duration, the bytes workers sent each other (``transfer_outgoing_bytes_total``
before and after) and the CPU other processes used meanwhile (``other_cores``).

Usage: ``python bench/bench_scaling.py [--shapes 1x1,2x1,1x2] [--wfi 4] [--nside 4096]
[--combine-frames 25000] [--combine-rows 64] [--tasks 20000] [--skip-wfi] [--skip-combine] [--skip-tasks]``.
Results: ``--out/bench_scaling.json``. ~12 min with the defaults on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_excam import NPIX, synthetic_l2b, timed
from bench_wfi import git_version, sca_inputs

GIB = 2**30


def parse_shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for s in text.split(","):
        w, _, t = s.strip().partition("x")
        out.append((int(w), int(t)))
    return out


def bytes_sent(client) -> int:
    """Bytes the workers have sent each other so far (monotonic per worker process)."""
    return sum(client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total).values())


def measured(client, fn) -> dict:
    """``timed`` (wall, memory, task stream, other CPU) plus the bytes moved between workers."""
    b0 = bytes_sent(client)
    r = timed(client, fn)
    r["bytes_moved"] = bytes_sent(client) - b0
    r["mean_task_s"] = r["task_s"] / max(r["n_tasks"], 1)
    return r


def _noop(x):
    return x


def task_overhead(client, m: int) -> dict:
    """Wall time per task of ``m`` tasks that do nothing: futures, and an array graph with a tree sum."""
    import dask.array as da

    client.gather(client.map(_noop, range(200), pure=False))  # comms and the function warmed
    futs = measured(client, lambda: client.gather(client.map(_noop, range(m), pure=False)))
    arr = da.ones(m, chunks=1, dtype=np.float32) + 1  # one fused task per block, then the reduction tree
    graph = measured(client, lambda: client.compute(arr.sum(), sync=True))
    for r, n in ((futs, m), (graph, None)):
        r["us_per_task"] = 1e6 * r["s"] / (n or r["n_tasks"])
    return {"futures": futs, "array_graph": graph, "m": m}


def wfi_batch(client, args, warm_job, batch_job) -> dict:
    from detflow.runtime.run import run

    shutil.rmtree(warm_job.store, ignore_errors=True)
    run(warm_job, client=client, progress=False)  # kernels compiled, reference tiles' code paths warmed
    shutil.rmtree(warm_job.store, ignore_errors=True)
    shutil.rmtree(batch_job.store, ignore_errors=True)
    r = measured(client, lambda: run(batch_job, client=client, progress=False))
    shutil.rmtree(batch_job.store, ignore_errors=True)
    r["exposures"] = args.wfi
    r["per_exposure_s"] = r["s"] / args.wfi
    return r


def emccd_combine(client, args) -> dict:
    from detflow.instruments.roman_excam_plan import combine_tile
    from detflow.io.store import StoreWriter
    from detflow.steps.excam import combine

    n, rows = args.combine_frames, args.combine_rows
    tile = combine_tile(n, NPIX, NPIX, 256)
    if rows % tile:
        raise SystemExit(f"--combine-rows {rows} is not a multiple of the combine tile {tile} at {n} frames")
    warm = synthetic_l2b(16, 256)
    client.compute([x["data"] for x in combine(warm)] + [warm["dq"].sum(), warm["err"].sum()], sync=True)
    ds = synthetic_l2b(n, tile, rows)
    store = args.out / f"scaling_combine_{n}.zarr"
    shutil.rmtree(store, ignore_errors=True)

    def go():
        mean, median = combine(ds)
        with StoreWriter(store) as w:
            client.compute(w.add_all({"mean_comb": mean, "median_comb": median}), sync=True)
            w.commit()

    r = measured(client, go)
    shutil.rmtree(store, ignore_errors=True)
    r.update({"frames": n, "rows": rows, "tile": tile, "pixel_frames_per_s": n * rows * NPIX / r["s"]})
    return r


def one_shape(args, shape, jobs) -> dict:
    from detflow.instruments.base import ClusterConfig
    from detflow.runtime.cluster import get_client

    w, t = shape
    cfg = ClusterConfig(n_workers=w, threads_per_worker=t, dashboard_address="127.0.0.1:0")
    res: dict = {"workers": w, "threads": t}
    t0 = time.perf_counter()
    with get_client(cfg) as client:
        client.wait_for_workers(w, timeout=120)
        res["cluster_start_s"] = time.perf_counter() - t0
        from detflow.runtime.cluster import warmup

        t0 = time.perf_counter()
        client.run(warmup, "wfi")  # every worker compiles the WFI kernels (a tiny job, in-process)
        res["warmup_s"] = time.perf_counter() - t0
        print(f"\n{w} worker(s) x {t} thread(s): cluster ready in {res['cluster_start_s']:.1f} s, "
              f"warmed in {res['warmup_s']:.1f} s", flush=True)  # fmt: skip
        if not args.skip_tasks:
            r = res["tasks"] = task_overhead(client, args.tasks)
            print(f"  {args.tasks} no-op futures: {r['futures']['s']:.2f} s, {r['futures']['us_per_task']:.0f} us/task; "
                  f"array graph of {r['array_graph']['n_tasks']} tasks: {r['array_graph']['s']:.2f} s, "
                  f"{r['array_graph']['us_per_task']:.0f} us/task   [others {r['array_graph']['other_cores']:.2f} cores]",
                  flush=True)  # fmt: skip
        if not args.skip_wfi:
            r = res["wfi"] = wfi_batch(client, args, *jobs)
            print(f"  WFI {args.wfi} x {args.nside}^2 exposures, one job: {r['s']:.1f} s ({r['per_exposure_s']:.1f} s each), "
                  f"{r['n_tasks']} tasks, {r['task_s']:.0f} worker-s (mean task {1e3 * r['mean_task_s']:.0f} ms), "
                  f"{r['bytes_moved'] / 1e9:.2f} GB moved between workers, peak RSS {r['peak_rss'] / GIB:.2f} GiB"
                  f"   [others {r['other_cores']:.2f} cores]", flush=True)  # fmt: skip
        if not args.skip_combine:
            r = res["combine"] = emccd_combine(client, args)
            print(f"  EMCCD combine {r['frames']} frames x {r['rows']} x {NPIX}: {r['s']:.1f} s, {r['n_tasks']} tasks, "
                  f"{r['task_s']:.0f} worker-s (mean task {1e3 * r['mean_task_s']:.0f} ms), "
                  f"{r['bytes_moved'] / 1e9:.3f} GB moved, peak RSS {r['peak_rss'] / GIB:.2f} GiB"
                  f"   [others {r['other_cores']:.2f} cores]", flush=True)  # fmt: skip
    return res


def efficiencies(shapes: list[dict]) -> None:
    """Speedup and efficiency of every shape against the 1 x 1 run (if measured)."""
    base = next((s for s in shapes if (s["workers"], s["threads"]) == (1, 1)), None)
    if base is None:
        return
    for s in shapes:
        cores = s["workers"] * s["threads"]
        for part in ("wfi", "combine"):
            if part in s and part in base:
                s[part]["speedup"] = base[part]["s"] / s[part]["s"]
                s[part]["efficiency"] = s[part]["speedup"] / cores


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1x1,2x1,1x2", help="LocalCluster shapes: workers x threads")
    ap.add_argument("--wfi", type=int, default=4, help="WFI exposures in the batch job (1..18)")
    ap.add_argument("--nside", type=int, default=4096)
    ap.add_argument("--combine-frames", type=int, default=25_000)
    ap.add_argument("--combine-rows", type=int, default=64)
    ap.add_argument("--tasks", type=int, default=20_000, help="no-op tasks for the scheduler cost per task")
    ap.add_argument("--skip-wfi", action="store_true")
    ap.add_argument("--skip-combine", action="store_true")
    ap.add_argument("--skip-tasks", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "output")
    args = ap.parse_args(argv)
    if not 1 <= args.wfi <= 18:
        ap.error("--wfi takes 1..18 (WFI01..WFI18)")
    code_version = git_version()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["DETFLOW_CHECKSUM_CACHE"] = tempfile.mkdtemp(prefix="detflow-bench-sums-")  # workers inherit it

    jobs = None
    if not args.skip_wfi:
        from detflow.instruments.roman_wfi import DEFAULT_RECIPE
        from detflow.io.caldir import sha256
        from detflow.runtime.job import load_job
        from detflow.sim.wfi import SimConfig, simulate

        simdir = args.out / f"wfi_sim_{args.nside}"
        if not (simdir / "gen_cal_image.yaml").exists():
            shutil.rmtree(simdir, ignore_errors=True)
            simulate(simdir, SimConfig(nside=args.nside, seed=7))
        job = load_job(simdir / "gen_cal_image.yaml").model_copy(update={"recipe": list(DEFAULT_RECIPE)})
        files, caldir = sca_inputs(simdir, args.out, args.wfi)
        batch = job.model_copy(update={"input": [str(f) for f in files], "caldir": caldir,
                                       "output": args.out / f"scaling_wfi_{args.nside}_x{args.wfi}.zarr"})  # fmt: skip
        warm = job.model_copy(update={"output": args.out / f"scaling_wfi_{args.nside}_warm.zarr"})
        paths = [*batch.input, *(v.replace("{detector}", f"WFI{i:02d}") for i in range(1, args.wfi + 1) for v in caldir.values()),
                 *([warm.input] if isinstance(warm.input, str) else warm.input),
                 *(str(v) for v in warm.caldir.values())]  # fmt: skip
        t0 = time.perf_counter()
        for p in paths:
            sha256(p)
        print(f"SHA-256 of {len(paths)} input and reference files in {time.perf_counter() - t0:.1f} s (not timed below)",
              flush=True)  # fmt: skip
        jobs = (warm, batch)

    shapes = [one_shape(args, s, jobs) for s in parse_shapes(args.shapes)]
    efficiencies(shapes)
    print("\nstrong scaling against 1 worker x 1 thread, same invocation:")
    for s in shapes:
        parts = [f"{p} {s[p]['s']:.1f} s (x{s[p]['speedup']:.2f}, efficiency {s[p]['efficiency']:.2f})"
                 for p in ("wfi", "combine") if p in s and "speedup" in s[p]]  # fmt: skip
        print(f"  {s['workers']} x {s['threads']}: " + "; ".join(parts))
    res = {"shapes": shapes, "args": {k: str(v) for k, v in vars(args).items()}, "git": code_version,
           "date": time.strftime("%Y-%m-%d %H:%M %Z"),
           "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores "
                      f"{psutil.virtual_memory().total / GIB:.0f} GiB"}  # fmt: skip
    (args.out / "bench_scaling.json").write_text(json.dumps(res, indent=1, default=str))
    return res


if __name__ == "__main__":
    main()
