"""Benchmark: CMOS characterisation, ingest and the dark-current fit, each against a plain reference measured
in the same run, on the same files and machine.

Data: a simulated campaign (``detflow.sim.cmos``, seed 0): ``--temps`` set points from -10 to 25 deg C, bias
frames (2 attempts x ``--n-bias`` per set point), darks at every (set point, ``--exptimes``) with
``--n-dark`` frames each (N = temps x exptimes x n_dark dark frames of ``--size`` x ``--size`` uint16, 12-bit
values left-shifted, data_scale 16), one flat per set point (the simulator always writes the flat section).
The simulator's own attempt writer (``_write_attempt``) writes the attempts, spread over ``--gen-processes``
processes: every attempt draws from its own seeded generator, so the tree and ``truth.npz`` are
bit for bit those of ``simulate_cmos_tree`` (checked at small size when this benchmark was written), in
half the time on 2 cores (the simulator alone takes ~0.45 s per 2048 x 2048 frame here, mostly numpy's
Poisson draws). The campaign is kept in ``--out/cmos_sim/<parameters>`` and reused; campaigns above 1 GB
are removed after a successful run unless ``--keep-sim`` (kept after a failed one).

1. **Ingest** of the dark section (N raw frames) into a zarr store (``detflow.io.cmos_raw.ingest_section``:
   validation of every frame's size, log row and config, then the row-strip read tasks and the zarr
   writes) on a LocalCluster of ``--workers`` x ``--threads`` (default 1 x 2): wall time, frames/s and MB/s
   of raw data, peak RSS of the process tree, CPU of other processes (``other_cores``). Planning alone
   (discovery, configs, logs, file sizes; no pixel read) is timed first. Against, in the same run: the
   disk's sequential bandwidth (a file of the raw dark bytes written in 8 MiB blocks with fsync, then read
   back) and plain ``np.fromfile`` of the same raw files, one after the other. Before every read the
   files' pages are dropped from the page cache (``os.sync`` + ``posix_fadvise(DONTNEED)``, no root
   needed): cold-ish, since a VM's host may still cache them.
2. **The dark-current fit**: ``detflow.calib.cmos.build_dark_model`` on the ingested darks, written with its
   ``dark_model`` group to a zarr store as a run writes it (bias masters subtracted, group rates, hot-pixel
   statistics, the 2-D fit ``A t^gamma exp(B (T - Tmin))`` and the 1-D fits per exposure, the noise-model
   weights). Two variants: the default (hot pixels fitted per pixel by weighted nonlinear least squares,
   every other pixel carries one global fit) and **every pixel fitted** (``hot_min_groups=0``, which
   makes every pixel "hot"; the API has no other switch). Each on fresh LocalClusters of 1 worker x 1
   thread, 2 workers x 1 thread and 1 worker x 2 threads (``--shapes``). Before anything is timed on a
   cluster, every worker imports detflow and compiles the dark-fit kernel (``client.run``; the cluster
   start and this warm-up are recorded apart, under ``clusters``). The bias model (``build_bias_model``
   defaults) is built and written once beforehand, untimed. The ingest runs on the cluster of its own
   shape (``--workers`` x ``--threads``), which is the first one started.
   Against a vectorised NumPy baseline in a child process (peak RSS = its ``ru_maxrss``): the same frames,
   grouped as ``build_dark_model`` groups them (exposure to 1 ms, set point (``filetemp``) to 0.1 deg C), the
   nearest-temperature bias master subtracted, the group means / exposure time = rates, then
   ``ln rate = ln A + gamma ln t + B (T - Tmin)`` for every pixel by one ``np.linalg.lstsq`` with the
   pixels as multiple right-hand sides (unweighted, log space; rates below 1e-3 DN/s clipped there and
   counted). It works on row blocks whose group sums stay under 512 MiB, reading the rows of each raw file
   with ``np.fromfile(offset=...)``, and saves A, B, gamma (``np.save``). Times and peak memory are printed
   beside the baseline's as ratios, and both fits' A and B are compared with the simulator's truth.

The defaults (256 x 256, 120 darks) check that everything runs and give the ratios at a toy size, where
fixed costs dominate detflow's times; ``--full`` is the measurement. Their run time is estimated, not yet
measured: ~1.5 min on 2 cores, most of it the four cluster starts and warm-ups (a 64 x 64 check with 18
darks took 81 s, 45 s of them starting and warming clusters, while other processes used 1-2 of the 2 cores).

Usage: ``python bench/bench_cmos.py [--size 256] [--temps 5] [--exptimes 0.5,1,2] [--n-dark 8] [--n-bias 4]
[--shapes 1x1,2x1,1x2] [--full] [--skip-ingest] [--skip-fit] [--skip-baseline] [--keep-sim]``; ``--full`` =
``--size 2048 --temps 10 --exptimes 0.25,0.5,1,2 --n-dark 25 --n-bias 5`` (1000 dark frames, 8.4 GB raw;
~30 GB of disk at the peak). JSON results go to ``--out`` (``bench/output``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_excam import timed
from bench_wfi import OtherCPU, git_version

GIB, MB = 2**30, 1e6
BLOCK = 8 * 2**20
DEFAULTS = {"size": 256, "temps": 5, "exptimes": "0.5,1,2", "n_dark": 8, "n_bias": 4}
FULL = {"size": 2048, "temps": 10, "exptimes": "0.25,0.5,1,2", "n_dark": 25, "n_bias": 5}
KEEP_BELOW = 2**30  # campaigns smaller than this stay in --out/cmos_sim for the next run
RATE_FLOOR = 1e-3  # DN/s: the baseline's log-space fit clips lower rates here


# =================================================================================================
# the campaign
# =================================================================================================
def campaign_config(args):
    from detflow.sim.cmos import CmosSimConfig

    temps = tuple(float(t) for t in np.round(np.linspace(-10.0, 25.0, args.temps), 1))
    return CmosSimConfig(height=args.size, width=args.size, temps=temps, bias_attempts=2, n_bias=args.n_bias,
                         dark_exptimes=tuple(args.exptime_list), n_dark=args.n_dark, flat_exptimes=(0.05,), n_flat=1,
                         seed=0)  # fmt: skip


_SHARED: dict = {}  # what the writer processes read (the truth is sent once per process, not per attempt)


def _init_writer(shared: dict) -> None:
    _SHARED.update(shared)


def _write_one(item) -> int:
    from detflow.sim import cmos as simcmos

    k, spec = item
    s = _SHARED
    return len(simcmos._write_attempt(s["tmp"], s["final"], k, spec, s["cfg"], s["truth"]))


def simulate_parallel(final: Path, cfg, processes: int) -> float:
    """``simulate_cmos_tree(final, cfg)``'s tree and truth.npz, the attempts written by ``processes`` forked
    processes. Returns the seconds taken."""
    import dataclasses

    from detflow.instruments import cmos as inst
    from detflow.sim import cmos as simcmos

    t0 = time.perf_counter()
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    truth = simcmos._truth(cfg)
    items, counts = [], dict.fromkeys(inst.CALTYPES, 0)
    for spec in simcmos._attempts(cfg):  # the variant number k as simulate_cmos_tree numbers it
        items.append((inst.CALTYPES.index(spec[0]) + counts[spec[0]], spec))
        counts[spec[0]] += 1
    shared = {"tmp": tmp, "final": final, "cfg": cfg, "truth": truth}
    _SHARED.update(shared)
    if processes > 1:  # spawned, not forked: run_all.py calls this after other benchmarks left threads running
        with multiprocessing.get_context("spawn").Pool(processes, _init_writer, (shared,)) as pool:
            n = sum(pool.imap_unordered(_write_one, items, chunksize=1))
    else:
        n = sum(map(_write_one, items))
    np.savez(tmp / "truth.npz", **{k: np.asarray(v) for k, v in truth.items()},
             config=np.asarray(repr(dataclasses.asdict(cfg))))  # fmt: skip
    _SHARED.clear()
    tmp.rename(final)
    dt = time.perf_counter() - t0
    print(
        f"simulated {n} frames of {cfg.height}x{cfg.width} in {dt:.1f} s ({processes} processes) -> {final}", flush=True
    )
    return dt


def ensure_campaign(args) -> tuple[Path, float | None]:
    cfg = campaign_config(args)
    key = f"{args.size}px_{args.temps}T_{'-'.join(f'{t:g}' for t in args.exptime_list)}s_{args.n_dark}d_{args.n_bias}b"
    root = args.out / "cmos_sim" / key
    stamp = root / "bench_sim.json"
    want = {"config": repr(cfg)}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return root, None
    shutil.rmtree(root, ignore_errors=True)
    frames = len(cfg.temps) * (2 * cfg.n_bias + len(cfg.dark_exptimes) * cfg.n_dark + 1)
    raw = frames * cfg.height * cfg.width * 2
    need = 3.2 * raw + GIB  # raw + store + the disk-bandwidth file
    free = shutil.disk_usage(args.out).free
    if free < need:
        raise SystemExit(f"the campaign needs ~{need / 1e9:.0f} GB on {args.out} (raw frames, store, bandwidth "
                         f"file), {free / 1e9:.0f} GB free: use a smaller --size or fewer frames")  # fmt: skip
    root.parent.mkdir(parents=True, exist_ok=True)
    t_sim = simulate_parallel(root, cfg, args.gen_processes)
    stamp.write_text(json.dumps(want))
    return root, t_sim


def raw_files(section: Path) -> list[Path]:
    return sorted(section.rglob("*.raw"))


# =================================================================================================
# 1. ingest against the disk
# =================================================================================================
def evict(paths) -> None:
    """Drop the pages of ``paths`` from the page cache (after writing back dirty pages)."""
    os.sync()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def disk_bandwidth(path: Path, nbytes: int) -> dict:
    """Sequential write (8 MiB blocks, fsync) and read (after evicting) of a ``nbytes`` file; bytes/s."""
    block = np.random.default_rng(0).integers(0, 2**16, BLOCK // 2, dtype=np.uint16).tobytes()  # incompressible
    n = max(1, -(-nbytes // BLOCK))
    with OtherCPU() as cpu_w:
        t0 = time.perf_counter()
        with open(path, "wb", buffering=0) as f:
            f.writelines(block for _ in range(n))
            os.fsync(f.fileno())
        t_w = time.perf_counter() - t0
    evict([path])
    buf = bytearray(BLOCK)
    with OtherCPU() as cpu_r:
        t0 = time.perf_counter()
        got = 0
        with open(path, "rb", buffering=0) as f:
            while k := f.readinto(buf):
                got += k
        t_r = time.perf_counter() - t0
    path.unlink()
    size = n * BLOCK
    return {"bytes": size, "write_s": t_w, "read_s": t_r, "write_Bps": size / t_w, "read_Bps": got / t_r,
            "other_cores_write": cpu_w.other_cores, "other_cores_read": cpu_r.other_cores}  # fmt: skip


def fromfile_read(paths: list[Path]) -> dict:
    evict(paths)
    total = 0
    with OtherCPU() as cpu:
        t0 = time.perf_counter()
        for p in paths:
            total += np.fromfile(p, dtype="<u2").nbytes
        dt = time.perf_counter() - t0
    return {"s": dt, "bytes": total, "Bps": total / dt, "frames_per_s": len(paths) / dt, "other_cores": cpu.other_cores}


def ingest_reference(args, root: Path, work: Path) -> dict:
    """The disk's bandwidth and np.fromfile of the raw dark frames (no cluster running)."""
    paths = raw_files(root / "TestSection2")
    raw_bytes = sum(p.stat().st_size for p in paths)
    res = {"frames": len(paths), "raw_bytes": raw_bytes}
    print(f"ingest: {len(paths)} dark frames, {raw_bytes / MB:.0f} MB raw", flush=True)
    res["disk"] = d = disk_bandwidth(work / "bandwidth.bin", raw_bytes)
    print(f"  disk, one {d['bytes'] / MB:.0f} MB file: write {d['write_Bps'] / MB:.0f} MB/s (fsync), read "
          f"{d['read_Bps'] / MB:.0f} MB/s (evicted first)   [others: {d['other_cores_read']:.2f} cores]", flush=True)  # fmt: skip
    res["fromfile"] = f = fromfile_read(paths)
    print(f"  np.fromfile of the raw files: {f['s']:.2f} s, {f['frames_per_s']:.0f} frames/s, {f['Bps'] / MB:.0f} MB/s"
          f"   [others: {f['other_cores']:.2f} cores]", flush=True)  # fmt: skip
    return res


def ingest_detflow(args, client, root: Path, work: Path, res: dict) -> None:
    """detflow's ingest of the dark section on ``client`` (a warm cluster), against ``res``'s references."""
    from detflow.io.cmos_raw import ingest_section, plan_section

    dark_root = root / "TestSection2"
    paths = raw_files(dark_root)
    store = work / "dark.zarr"
    shutil.rmtree(store, ignore_errors=True)
    with OtherCPU() as cpu:
        t0 = time.perf_counter()
        plan = plan_section(dark_root, caltype="DARK")
        t_plan = time.perf_counter() - t0
    res["plan"] = {"s": t_plan, "frames": len(plan.frames), "other_cores": cpu.other_cores}
    evict(paths)
    r = timed(client, lambda: ingest_section(dark_root, store, caltype="DARK", data_scale=16, index=False))
    r.update({"frames_per_s": len(paths) / r["s"], "raw_Bps": res["raw_bytes"] / r["s"],
              "store_bytes": sum(p.stat().st_size for p in store.rglob("*") if p.is_file()),
              "workers": args.workers, "threads": args.threads})  # fmt: skip
    r["ratio_to_fromfile"] = r["raw_Bps"] / res["fromfile"]["Bps"]
    r["ratio_to_disk_read"] = r["raw_Bps"] / res["disk"]["read_Bps"]
    res["detflow"] = r
    print(f"  detflow ingest_section ({args.workers} x {args.threads}): {r['s']:.2f} s, {r['frames_per_s']:.0f} frames/s, "
          f"{r['raw_Bps'] / MB:.0f} MB/s of raw data ({r['ratio_to_fromfile']:.2f} x np.fromfile, "
          f"{r['ratio_to_disk_read']:.2f} x the disk read); store {r['store_bytes'] / MB:.0f} MB; peak RSS "
          f"{r['peak_rss'] / GIB:.2f} GiB; planning alone {t_plan:.2f} s   [others: {r['other_cores']:.2f} cores]",
          flush=True)  # fmt: skip


# =================================================================================================
# 2. the dark fit
# =================================================================================================
def _warm_worker() -> bool:
    """Import what the tasks use and compile the dark-fit kernel in this process (run on every worker before
    anything is timed: a fresh worker otherwise pays the imports and numba's compilation in its first tasks)."""
    import xarray  # noqa: F401
    import zarr  # noqa: F401

    import detflow.calib.cmos
    import detflow.io.cmos_raw
    import detflow.io.store  # noqa: F401
    from detflow.kernels import cmos as kc

    n, p = 6, 3
    x = np.column_stack([np.ones(n), np.arange(n, dtype=float), np.log(np.arange(1.0, n + 1))])
    y = np.exp(x @ np.array([1.0, 0.05, 0.1]))[None].repeat(2, 0)
    w = np.ones_like(y)
    out = (np.empty((2, p)), np.empty((2, p, p)), np.empty(2), np.empty(2, np.int64), np.empty(2, np.uint8))
    kc.fit_exp_model(y, w, x, np.ones(2, bool), 50, 1e-9, *out)
    return True


def prepare_inputs(client, root: Path, work: Path) -> tuple[Path, Path]:
    """The dark store (ingested here unless the ingest benchmark made it) and the bias model store, untimed."""
    from detflow.calib.cmos import build_bias_model
    from detflow.io.cmos_raw import ingest_section, open_cmos_section
    from detflow.io.store import StoreWriter

    dark_store, bias_store, model = work / "dark.zarr", work / "bias.zarr", work / "bias_model.zarr"
    if not dark_store.exists():
        ingest_section(root / "TestSection2", dark_store, caltype="DARK", data_scale=16, index=False)
    if not bias_store.exists():
        ingest_section(root / "TestSection1", bias_store, caltype="BIAS", data_scale=16, index=False)
    shutil.rmtree(model, ignore_errors=True)
    with StoreWriter(model, overwrite=True) as w:
        client.compute(w.add_all({"bias_model": build_bias_model(open_cmos_section(bias_store))}), sync=True)
        w.commit()
    return dark_store, model


def fit_once(client, dark_store: Path, bias_model: Path, out: Path, every_pixel: bool) -> dict:
    from detflow.calib.cmos import build_dark_model
    from detflow.io.cmos_raw import open_cmos_section
    from detflow.io.store import StoreWriter, open_store

    shutil.rmtree(out, ignore_errors=True)

    def go():
        dark = open_cmos_section(dark_store)
        bias = open_store(bias_model)["bias_model"].to_dataset()
        model = build_dark_model(dark, bias, **({"hot_min_groups": 0} if every_pixel else {}))
        with StoreWriter(out, overwrite=True) as w:
            client.compute(w.add_all({"dark_model": model}), sync=True)
            w.commit()

    r = timed(client, go)
    r["store"] = str(out)
    return r


BASELINE_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np, zarr
    a = json.loads(open(sys.argv[1]).read())
    t0 = time.perf_counter()
    h, w, scale = a["height"], a["width"], float(a["data_scale"])
    g = zarr.open_group(a["bias_model"], path="bias_model", mode="r")
    bt = np.asarray(g["group_temp"][:], np.float64)
    temps, texp = np.asarray(a["temps"]), np.asarray(a["exptimes"])
    gidx = np.asarray(a["group"])
    ng = int(gidx.max()) + 1
    gtemp = np.array([temps[gidx == k].mean() for k in range(ng)])
    gexp = np.array([texp[gidx == k].mean() for k in range(ng)])
    nper = np.bincount(gidx, minlength=ng).astype(np.float64)
    jb = np.argmin(np.abs(temps[:, None] - bt[None, :]), axis=1)      # nearest bias master per frame
    tmin = gtemp.min()
    design = np.column_stack([np.ones(ng), np.log(gexp), gtemp - tmin])  # ln A, gamma, B
    rows = max(1, min(h, a["block_bytes"] // (8 * ng * w)))
    A, G, B = (np.empty((h, w)) for _ in range(3))
    clipped = 0
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        master = np.asarray(g["master"][:, r0:r1, :], np.float64)
        sums = np.zeros((ng, r1 - r0, w))
        for i, p in enumerate(a["paths"]):
            frame = np.fromfile(p, dtype="<u2", count=(r1 - r0) * w, offset=r0 * w * 2).reshape(r1 - r0, w)
            sums[gidx[i]] += frame / scale - master[jb[i]]
        rate = sums / (nper * gexp)[:, None, None]
        low = rate < a["floor"]
        clipped += int(low.sum())
        rhs = np.log(np.where(low, a["floor"], rate)).reshape(ng, -1)
        coef = np.linalg.lstsq(design, rhs, rcond=None)[0]                 # every pixel at once
        A[r0:r1], G[r0:r1], B[r0:r1] = (c.reshape(r1 - r0, w) for c in (np.exp(coef[0]), coef[1], coef[2]))
    np.save(a["out"] + "_A.npy", A); np.save(a["out"] + "_gamma.npy", G); np.save(a["out"] + "_B.npy", B)
    dt = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"s": dt, "peak_rss": ru.ru_maxrss * 1024, "cpu_s": ru.ru_utime + ru.ru_stime, "groups": ng,
                      "row_block": rows, "clipped_rates": clipped, "rates": ng * h * w, "Tmin": tmin}))
""")


def baseline(args, dark_store: Path, bias_model: Path, work: Path) -> dict:
    """The NumPy log-space lstsq fit in a child process, on the raw files of the ingested frames."""
    import zarr

    from detflow.calib.cmos.frames import _group, _round, _temp_keys
    from detflow.io.cmos_raw import open_cmos_section

    g = zarr.open_group(str(dark_store), path="l1", mode="r")
    temps = np.asarray(g["temp"][:], np.float64)
    texp = np.asarray(g["exptime"][:], np.float64)
    frames = open_cmos_section(dark_store)
    _, gidx = _group(_round(texp, 1e-3), _temp_keys(frames, temps, 0.1))  # build_dark_model's grouping
    payload = {"paths": [str(p) for p in g["path"][:]], "temps": temps.tolist(), "exptimes": texp.tolist(),
               "group": gidx.tolist(), "height": int(g.attrs["height"]), "width": int(g.attrs["width"]),
               "data_scale": g.attrs["data_scale"], "bias_model": str(bias_model), "floor": RATE_FLOOR,
               "block_bytes": 512 * 2**20, "out": str(work / "baseline")}  # fmt: skip
    evict([Path(p) for p in payload["paths"]])
    arg = work / "baseline_payload.json"  # a file: 1000 paths are beyond the command line's length limit
    arg.write_text(json.dumps(payload))
    with OtherCPU() as cpu:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", BASELINE_CHILD, str(arg)], capture_output=True, text=True,
                           check=False)  # fmt: skip
        wall = time.perf_counter() - t0
    if r.returncode != 0:
        print(r.stdout[-2000:], r.stderr[-4000:])
        raise SystemExit("the NumPy baseline failed")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out.update({"wall_s": wall, "other_cores": cpu.other_cores, "prefix": payload["out"]})
    return out


def accuracy(truth: dict, A, B, G, tmin: float) -> dict:
    """Median relative error of A (at the fit's Tmin, t = 1 s), and median error of B and gamma, for the
    hot and the normal pixels (the model's gamma is the rate's exponent: truth dark_gamma - 1)."""
    hot = np.asarray(truth["hot"], bool)
    a_true = truth["dark_A"] * np.exp(truth["dark_B"] * (tmin - float(truth["Tmin"])))
    ra, db, dg = A / a_true - 1, B - truth["dark_B"], G - (float(truth["dark_gamma"]) - 1)
    out = {}
    for name, m in (("hot", hot), ("normal", ~hot)):
        out[name] = {"A_rel_median": float(np.nanmedian(ra[m])), "A_rel_mad": float(np.nanmedian(np.abs(ra[m]))),
                     "B_median": float(np.nanmedian(db[m])), "gamma_median": float(np.nanmedian(dg[m]))}  # fmt: skip
    return out


def fit_runs(args, client, shape, dark_store: Path, bias_model: Path, work: Path, truth: dict, res: dict) -> None:
    """The two build_dark_model variants on ``client`` (a warm cluster of ``shape``), against the baseline."""
    from detflow.io.store import open_store

    nw, nt = shape
    npix, b = res["pixels"], res.get("baseline")
    for every in [v == "every" for v in args.variant_list]:
        variant = "every pixel" if every else "hot pixels per pixel"
        r = fit_once(client, dark_store, bias_model, work / f"dark_model_{nw}x{nt}_{int(every)}.zarr", every)
        m = open_store(r["store"])["dark_model"]
        r["accuracy"] = accuracy(truth, m["A"].values, m["B"].values, m["gamma"].values, float(m.attrs["Tmin"]))
        r.update({"workers": nw, "threads": nt, "every_pixel": every, "variant": variant, "pixels_per_s": npix / r["s"],
                  "groups": int(m.sizes["dark_group"])})  # fmt: skip
        shutil.rmtree(r["store"], ignore_errors=True)
        vs = ""
        if b:
            r["ratio_time"] = r["s"] / b["s"]
            r["ratio_peak_rss"] = r["peak_rss"] / b["peak_rss"]
            vs = f" = {r['ratio_time']:.2f} x the baseline's time, {r['ratio_peak_rss']:.2f} x its memory"
        res["runs"].append(r)
        print(f"  build_dark_model, {variant:20s} {nw} worker(s) x {nt} thread(s): {r['s']:6.2f} s, peak RSS "
              f"{r['peak_rss'] / GIB:.2f} GiB (tree){vs}   [others: {r['other_cores']:.2f} cores]", flush=True)  # fmt: skip


def cluster_runs(args, root: Path, work: Path, res: dict) -> None:
    """One fresh LocalCluster per shape (the ingest shape first): workers warmed, then the timed runs."""
    from distributed import Client, LocalCluster

    ingest_shape = (args.workers, args.threads)
    shapes = [] if args.skip_fit else list(args.shape_list)
    if not args.skip_ingest:
        shapes = [ingest_shape] + [s for s in shapes if s != ingest_shape]
    fit = res.get("dark_fit")
    truth = dict(np.load(root / "truth.npz")) if fit is not None else None
    dark_store = bias_model = None
    res["clusters"] = []
    for shape in shapes:
        t0 = time.perf_counter()
        with LocalCluster(n_workers=shape[0], threads_per_worker=shape[1], processes=True, host="127.0.0.1",
                          dashboard_address=":0") as lc, Client(lc) as client:  # fmt: skip
            t_start = time.perf_counter() - t0
            client.run(_warm_worker)
            res["clusters"].append(
                {"shape": list(shape), "start_s": t_start, "warm_s": time.perf_counter() - t0 - t_start}
            )
            if shape == ingest_shape and "ingest" in res and "detflow" not in res["ingest"]:
                ingest_detflow(args, client, root, work, res["ingest"])
            if fit is None or shape not in args.shape_list:
                continue
            if dark_store is None:
                dark_store, bias_model = prepare_inputs(client, root, work)
                n, _, h, w = __import__("zarr").open_group(str(dark_store), path="l1", mode="r")["data"].shape
                fit.update(frames=int(n), pixels=int(h * w))
                print(f"dark fit: {h}x{w} pixels, {n} dark frames", flush=True)
                if not args.skip_baseline:
                    run_baseline(args, dark_store, bias_model, work, truth, fit)
            fit_runs(args, client, shape, dark_store, bias_model, work, truth, fit)


def run_baseline(args, dark_store: Path, bias_model: Path, work: Path, truth: dict, fit: dict) -> None:
    b = baseline(args, dark_store, bias_model, work)
    A, Bm, G = (np.load(f"{b['prefix']}_{k}.npy") for k in ("A", "B", "gamma"))
    b["accuracy"] = accuracy(truth, A, Bm, G, b["Tmin"])
    fit["baseline"] = b
    print(f"  NumPy lstsq baseline (log space, every pixel, {b['groups']} groups, rows of {b['row_block']}): "
          f"{b['s']:.2f} s, peak RSS {b['peak_rss'] / GIB:.2f} GiB; {b['clipped_rates']} of {b['rates']} rates "
          f"clipped to {RATE_FLOOR} DN/s for the log   [others: {b['other_cores']:.2f} cores]", flush=True)  # fmt: skip


# =================================================================================================
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=None, help=f"frame side in pixels (default {DEFAULTS['size']})")
    ap.add_argument(
        "--temps", type=int, default=None, help=f"set points from -10 to 25 C (default {DEFAULTS['temps']})"
    )
    ap.add_argument("--exptimes", default=None, help=f"dark exposure times, s (default {DEFAULTS['exptimes']})")
    ap.add_argument(
        "--n-dark", type=int, default=None, help=f"darks per (set point, exposure) (default {DEFAULTS['n_dark']})"
    )
    ap.add_argument("--n-bias", type=int, default=None, help=f"bias frames per attempt, 2 attempts per set point "
                                                             f"(default {DEFAULTS['n_bias']})")  # fmt: skip
    ap.add_argument(
        "--full", action="store_true", help="the issue's size: " + ", ".join(f"{k}={v}" for k, v in FULL.items())
    )
    ap.add_argument("--shapes", default="1x1,2x1,1x2", help="LocalCluster shapes of the dark fit: workers x threads")
    ap.add_argument("--workers", type=int, default=1, help="ingest: worker processes")
    ap.add_argument("--threads", type=int, default=2, help="ingest: threads per worker")
    ap.add_argument(
        "--gen-processes", type=int, default=min(2, os.cpu_count() or 1), help="processes writing the campaign"
    )
    ap.add_argument("--variants", default="default,every", help="dark fits to time: default (hot pixels per pixel) "
                    "and/or every (every pixel fitted)")  # fmt: skip
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--skip-fit", action="store_true")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument(
        "--keep-sim", action="store_true", help="keep a campaign above 1 GB in --out/cmos_sim for the next run"
    )
    ap.add_argument("--out", type=Path, default=HERE / "output")
    args = ap.parse_args(argv)
    for k, v in DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, FULL[k] if args.full else v)
    args.exptime_list = [float(t) for t in str(args.exptimes).split(",") if t]
    args.variant_list = [v for v in args.variants.split(",") if v]
    if not set(args.variant_list) <= {"default", "every"}:
        ap.error("--variants takes default and/or every")
    args.shape_list = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",") if s]
    args.out.mkdir(parents=True, exist_ok=True)
    code_version = git_version()
    t_all = time.perf_counter()
    root, t_sim = ensure_campaign(args)
    work = Path(tempfile.mkdtemp(prefix="cmos-bench-", dir=args.out))
    res = {"git": code_version, "size": args.size, "temps": args.temps, "exptimes": args.exptime_list,
           "n_dark": args.n_dark, "n_bias": args.n_bias, "campaign": str(root), "simulate_s": t_sim}  # fmt: skip
    try:
        if not args.skip_ingest:
            res["ingest"] = ingest_reference(args, root, work)
        if not args.skip_fit:
            res["dark_fit"] = {"runs": []}
        cluster_runs(args, root, work, res)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    raw = sum(p.stat().st_size for p in root.rglob("*.raw"))
    if raw > KEEP_BELOW and not args.keep_sim:  # kept after a failed run, to re-run without re-simulating
        shutil.rmtree(root, ignore_errors=True)
    res["total_s"] = time.perf_counter() - t_all
    res["machine"] = f"{platform.node()} {platform.machine()} {os.cpu_count()} cores " \
                     f"{psutil.virtual_memory().total / GIB:.0f} GiB"  # fmt: skip
    res["date"] = time.strftime("%Y-%m-%d %H:%M %Z")
    res["command"] = "python bench/bench_cmos.py " + " ".join(argv if argv is not None else sys.argv[1:])

    print(f"\nCMOS, {args.size}x{args.size} pixels, {res['total_s']:.0f} s in all")
    if "ingest" in res:
        i = res["ingest"]
        d = i["detflow"]
        print(f"  ingest {i['frames']} frames ({i['raw_bytes'] / MB:.0f} MB): detflow {d['frames_per_s']:.0f} frames/s, "
              f"{d['raw_Bps'] / MB:.0f} MB/s; np.fromfile {i['fromfile']['Bps'] / MB:.0f} MB/s; disk read "
              f"{i['disk']['read_Bps'] / MB:.0f} MB/s, write {i['disk']['write_Bps'] / MB:.0f} MB/s -> "
              f"{d['ratio_to_fromfile']:.2f} x np.fromfile, {d['ratio_to_disk_read']:.2f} x the disk")  # fmt: skip
    if "dark_fit" in res:
        f = res["dark_fit"]
        b = f.get("baseline")
        if b:
            print(f"  dark fit {f['pixels']} pixels x {f['frames']} frames: NumPy lstsq {b['s']:.2f} s, "
                  f"{b['peak_rss'] / GIB:.2f} GiB; A of the normal pixels {b['accuracy']['normal']['A_rel_median']:+.2%}, "
                  f"hot {b['accuracy']['hot']['A_rel_median']:+.2%} (median relative error)")  # fmt: skip
        for r in f["runs"]:
            vs = f" ({r['ratio_time']:.2f} x, {r['ratio_peak_rss']:.2f} x memory)" if b else ""
            acc = r["accuracy"]
            print(f"    detflow {r['variant']:20s} {r['workers']}x{r['threads']}: {r['s']:6.2f} s, "
                  f"{r['peak_rss'] / GIB:.2f} GiB{vs}; A normal {acc['normal']['A_rel_median']:+.2%}, "
                  f"hot {acc['hot']['A_rel_median']:+.2%}")  # fmt: skip
    tag = f"_{args.size}px_{args.temps * len(args.exptime_list) * args.n_dark}darks"
    (args.out / f"bench_cmos{tag}.json").write_text(json.dumps(res, indent=1, default=str))
    return res


if __name__ == "__main__":
    main()
