"""Benchmark: writing one EXCAM-like zarr shard, zarr-python's own ``ShardingCodec`` writer against detflow's
whole-shard encoder (``detflow.io.store.codecs.write_region``), in one thread of one process.

The shard: ``(32, 1024, 1024)`` float32 (a shard of ``frames_per_shard`` = 32 L2a/L2b frames, 128 MiB), inner
chunks ``(32, 256, 256)`` (16 per shard), values like calibrated EMCCD frames (Poisson counts times a gain
plus Gaussian read noise, so they compress as real frames do, not as zeros). Two compressor chains, those an
EXCAM run uses: blosc lz4 + bitshuffle (L2b data/err, ``FAST_FLOAT_CODEC``) and zarr's default zstd (L2a).
``--inner`` changes the inner chunk (e.g. ``32,64,64``, 256 inner chunks, the combine tile at 1000 frames);
``--threads 2`` writes two shards (two arrays) at once per writer, as a worker's two dask threads do.

Each round writes the same block into a fresh array with each writer, the writers interleaved so that a
change of machine load hits both alike; per writer the wall time and the process CPU time (every thread:
zarr encodes on its event-loop thread and a thread pool), min and median over ``--rounds``. zarr is measured
as configured by default and with ``array.write_empty_chunks = True`` (which skips its comparison of every
inner chunk with the fill value; detflow's encoder writes every chunk too). The written arrays are read back
and compared with the block (both writers must store the same values).

Usage: ``python bench/bench_shards.py [--rounds 7] [--inner 32,256,256] [--threads 1] [--out bench/output]``. Run it
alone: note the load average (``uptime``) beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from detflow.io.store.codecs import write_region

SHAPE = (32, 1024, 1024)
CHAINS = {"blosc-lz4-bitshuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")],
          "zstd-default": [ZstdCodec(level=0, checksum=False)]}  # fmt: skip


def _block(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3.0, size=SHAPE).astype(np.float32) * np.float32(8.7)
    return counts + rng.normal(0.0, 12.0, size=SHAPE).astype(np.float32)


def _create(root: Path, inner: tuple[int, ...], compressors: list) -> zarr.Array:
    return zarr.create_array(str(root), shape=SHAPE, dtype="float32", chunks=inner, shards=SHAPE,
                             compressors=compressors, fill_value=0.0, zarr_format=3)  # fmt: skip


def _zarr(root: Path, block: np.ndarray) -> None:
    zarr.open_array(str(root), mode="r+")[...] = block


def _zarr_all_chunks(root: Path, block: np.ndarray) -> None:
    with zarr.config.set({"array.write_empty_chunks": True}):
        zarr.open_array(str(root), mode="r+")[...] = block


def _ours(root: Path, block: np.ndarray) -> None:
    write_region(root, "", tuple(slice(0, n) for n in SHAPE), block)


WRITERS = {"zarr ShardingCodec": _zarr, "zarr, write_empty_chunks": _zarr_all_chunks, "detflow encoder": _ours}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--inner", default="32,256,256")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/output")
    args = ap.parse_args()
    inner = tuple(int(v) for v in args.inner.split(","))
    block = _block()
    load = os.getloadavg()
    pool = ThreadPoolExecutor(args.threads)
    results: dict = {"shape": SHAPE, "inner": inner, "rounds": args.rounds, "threads": args.threads, "loadavg_before": load,
                     "cpus": os.cpu_count(), "zarr": zarr.__version__, "chains": {}}  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    try:
        for chain, compressors in CHAINS.items():
            times: dict[str, list[tuple[float, float]]] = {w: [] for w in WRITERS}
            for r in range(args.rounds):
                for name, fn in WRITERS.items():
                    roots = [
                        work / f"{chain}-{r}-{t}-{name.replace(' ', '_').replace(',', '')}" for t in range(args.threads)
                    ]
                    for root in roots:
                        _create(root, inner, compressors)
                    w0, c0 = time.perf_counter(), time.process_time()
                    list(pool.map(fn, roots, [block] * len(roots)))
                    times[name].append((time.perf_counter() - w0, time.process_time() - c0))
                    if r == 0:
                        for root in roots:
                            np.testing.assert_array_equal(
                                zarr.open_array(str(root), mode="r")[...], block, err_msg=name
                            )
                    for root in roots:
                        shutil.rmtree(root)
            out = {}
            for name, t in times.items():
                wall, cpu = [w for w, _ in t], [c for _, c in t]
                out[name] = {"wall_min": min(wall), "wall_median": statistics.median(wall),
                             "cpu_min": min(cpu), "cpu_median": statistics.median(cpu)}  # fmt: skip
                print(
                    f"{chain:22s} {name:26s} wall min {min(wall):6.3f} s  median {statistics.median(wall):6.3f} s"
                    f"   cpu min {min(cpu):6.3f} s  median {statistics.median(cpu):6.3f} s",
                    flush=True,
                )
            results["chains"][chain] = out
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["loadavg_after"] = os.getloadavg()
    print(f"load average before {load[0]:.1f}, after {results['loadavg_after'][0]:.1f} on {os.cpu_count()} cpus")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"shards_{'x'.join(map(str, inner))}_{args.threads}t.json").write_text(
        json.dumps(results, indent=1)
    )


if __name__ == "__main__":
    main()
