"""``make bench``: every benchmark, at real sizes, with the reference tools measured in the same run.

By default about six and a half minutes on 2 cores: the Roman WFI exposure, warm and cold, against stcal
(~1 min); then the Roman Coronagraph EXCAM benchmark at modest sizes (~4 min, plus ~20 s the first time
to simulate its 100 L1 frames): 100 frames L1 -> L2b against corgidrp on 10 of them, and the mean +
median combine of 1,000 synthesized frames against corgidrp's ``combine_images`` on 100; then the CMOS
characterisation benchmark at a toy size (``bench_cmos.py`` defaults, ~1.5 min estimated, not yet timed):
the ingest of 120 simulated 256x256 darks against the disk and ``np.fromfile``, and the dark-current fit
(``build_dark_model``) on 1x1, 2x1 and 1x2 LocalClusters against a NumPy log-space ``lstsq``; then the plain CCD
benchmark (``bench_ccd.py``: 20 frames of 2048x2048, overscan, trim and a sigma-clipped combine against ccdproc,
~2 min).

Arguments are passed to ``bench_wfi.py``, except ``--skip-wfi``, ``--skip-excam``, ``--skip-cmos``, ``--skip-ccd``,
``--excam "ARGS"`` (passed to ``bench_excam.py``), ``--cmos "ARGS"`` (``bench_cmos.py``) and ``--ccd "ARGS"``
(``bench_ccd.py``). The longer modes are opt-in:

* ``--full``: every gen_cal_image step instead of the five-step recipe (~2 min);
* ``--full --skip-stcal --noise 2``: noise layers on top of the full chain (~13 min at 4096);
* ``--full --skip-stcal --sca 18``: 18 detectors' exposures as one job (~10 min at 4096, plus ~35 s
  the first time to write the 18 L1 copies);
* ``--skip-wfi --excam "--full --skip-combine"``: EXCAM L1 -> L2b at the issue's size (1000 frames,
  corgidrp on 50; ~23 min, plus ~3 min to simulate the frames; ~15 GB of disk, removed afterwards);
* ``--skip-wfi --excam "--skip-l2b --combine-frames 1000,5000 --corgi-combine-frames 200,300"``: the
  combine at 1,000 and 5,000 frames, corgidrp at 200 and 300 (~11 min, corgidrp up to ~14 GiB);
* ``--skip-wfi --excam "--skip-l2b --skip-corgidrp --combine-frames 5000,25000 --combine-rows 512"``:
  the combine at 25,000 frames on half the image, times scaled (~17 min; the whole image ~30 min).
* ``--skip-wfi --skip-excam --cmos="--full"`` (with ``=``: a lone ``--full`` would be read as an option of
  run_all): CMOS at the issue's size, 2048x2048 pixels and 1000 darks
  (8.4 GB of raw frames written first by the simulator's attempt writer on 2 processes; ~30 GB of disk at
  the peak; not yet timed).
* ``--scaling "ARGS"``: then ``bench_scaling.py`` (strong scaling on 1 and 2 worker processes, scheduler
  cost per task; ~12 min with its defaults; ``--scaling ""`` for the defaults).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_ccd
import bench_cmos
import bench_excam
import bench_scaling
import bench_wfi

if __name__ == "__main__":
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--skip-wfi", action="store_true")
    ap.add_argument("--skip-excam", action="store_true")
    ap.add_argument("--skip-cmos", action="store_true")
    ap.add_argument("--skip-ccd", action="store_true")
    ap.add_argument("--excam", default="", metavar="ARGS", help="arguments of bench_excam.py, in one string")
    ap.add_argument("--cmos", default="", metavar="ARGS", help="arguments of bench_cmos.py, in one string")
    ap.add_argument("--ccd", default="", metavar="ARGS", help="arguments of bench_ccd.py, in one string")
    ap.add_argument("--scaling", default=None, metavar="ARGS", help="also run bench_scaling.py with these arguments")
    ours, wfi_args = ap.parse_known_args(sys.argv[1:])
    t0 = time.perf_counter()
    if not ours.skip_wfi:
        bench_wfi.main(wfi_args)
    if not ours.skip_excam:
        print(flush=True)
        bench_excam.main(shlex.split(ours.excam))
    if not ours.skip_cmos:
        print(flush=True)
        bench_cmos.main(shlex.split(ours.cmos))
    if not ours.skip_ccd:
        print(flush=True)
        bench_ccd.main(shlex.split(ours.ccd))
    if ours.scaling is not None:
        print(flush=True)
        bench_scaling.main(shlex.split(ours.scaling))
    print(f"\nmake bench: {time.perf_counter() - t0:.0f} s")
