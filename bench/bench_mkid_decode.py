"""Benchmark: the MKID ``.bin`` decoder on one core (the numba kernels of ``detflow.kernels.mkid``).

Simulates ``--seconds`` files of an ``--instrument`` array at ``--rate`` counts/s per resonator
(``detflow.sim.mkid``), then, per file, after a warm-up (compilation) on the first, best of ``--repeat``: the scanning pass
(counts per resonator), the decoding pass (columns grouped by resonator, time-ordered), and a plain NumPy
decoder of the same layout for scale; photons/s and MB/s of each, single thread. Beside them the rate at
which the files are read (``cat`` of files just written: the page cache, an upper bound for a disk) and the
machine's load average. Usage: ``python bench/bench_mkid_decode.py [--seconds 3] [--rate 100]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from detflow.io import mkid_bin as mb
from detflow.kernels import mkid as km
from detflow.sim.mkid import MkidSimConfig, simulate_mkid


def numpy_decode(path: Path, second: int, beam: mb.Beammap, window: mb.Window) -> int:
    """A vectorised NumPy decoder (no grouping): the number of kept photons."""
    w = np.fromfile(path, dtype=">u8").astype(np.uint64)
    header = (w >> np.uint64(56)) == 0xFF
    packet = np.cumsum(header) - 1
    ticks = (w[header] & np.uint64(2**36 - 1)).astype(np.int64)
    x = (w >> np.uint64(54)).astype(np.int64)
    y = ((w >> np.uint64(44)) & np.uint64(0x3FF)).astype(np.int64)
    slot_map = beam.slot_map()
    inside = ~header & (packet >= 0) & (x < beam.ncols) & (y < beam.nrows)
    slot = np.where(inside, slot_map[np.minimum(y, beam.nrows - 1), np.minimum(x, beam.ncols - 1)], -1)
    t = (mb.year_start(second) - window.origin) * 1_000_000 + ticks[np.maximum(packet, 0)] * 500
    t += ((w >> np.uint64(35)) & np.uint64(0x1FF)).astype(np.int64)
    kept = (slot >= 0) & (t >= window.t_lo) & (t < window.t_hi)
    raw = ((w[kept] >> np.uint64(17)) & np.uint64(0x3FFFF)).astype(np.int64)
    phase = (np.where(raw >= 2**17, raw - 2**18, raw) * (180 / np.pi) / 2**15).astype(np.float32)
    return int(phase.size)


def _best(fn, repeat: int) -> float:
    """The shortest of ``repeat`` wall times of ``fn()`` (a shared machine's load only ever adds time)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instrument", default="mec")
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    tmp = tempfile.TemporaryDirectory() if a.dir is None else None
    d = Path(a.dir or tmp.name)
    t = time.perf_counter()
    sim = simulate_mkid(d, MkidSimConfig(instrument=a.instrument, seconds=a.seconds, rate=a.rate, keep_photons=False))
    t_sim = time.perf_counter() - t
    beam = mb.read_beammap(sim.beammap, a.instrument)
    sm, good = beam.slot_map(), beam.good
    window = mb.Window(int(sim.files[0].stem), 0, 10**12)
    mb.decode_file(sim.files[0], int(sim.files[0].stem), sm, good, window,
                   mb.scan_file(sim.files[0], int(sim.files[0].stem), sm, good.size, window)[0])  # fmt: skip
    rows = []
    for f in sim.files:
        s, size = int(f.stem), f.stat().st_size
        t = time.perf_counter()
        subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL, check=True)
        t_cat = time.perf_counter() - t
        counts, stats = mb.scan_file(f, s, sm, good.size, window)
        t_scan = _best(lambda: mb.scan_file(f, s, sm, good.size, window), a.repeat)
        t_dec = _best(lambda: mb.decode_file(f, s, sm, good, window, counts), a.repeat)
        t_np = _best(lambda: numpy_decode(f, s, beam, window), a.repeat)
        n = int(stats[km.PHOTONS])
        rows.append({"file": f.name, "MB": size / 1e6, "photons": n, "read_MB_s": size / 1e6 / t_cat,
                     "scan_Mph_s": n / t_scan / 1e6, "decode_Mph_s": n / t_dec / 1e6,
                     "scan_MB_s": size / 1e6 / t_scan, "decode_MB_s": size / 1e6 / t_dec,
                     "numpy_Mph_s": n / t_np / 1e6})  # fmt: skip
    out = {"instrument": a.instrument, "rate": a.rate, "sim_s": t_sim, "load_avg": os.getloadavg(), "files": rows,
           "cpus": os.cpu_count(), "numba_threads": 1}  # fmt: skip
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
