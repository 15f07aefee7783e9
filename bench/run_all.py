"""``make bench``: every benchmark, at real sizes, with the reference tools measured in the same run.

By default about one minute on 2 cores (the Roman WFI exposure, warm and cold, against stcal). Arguments
are passed to ``bench_wfi.py``; the longer modes are opt-in:

* ``--full``: every gen_cal_image step instead of the five-step recipe (~2 min);
* ``--full --skip-stcal --noise 2``: noise layers on top of the full chain (~13 min at 4096);
* ``--full --skip-stcal --sca 18``: 18 detectors' exposures as one job (~10 min at 4096, plus ~35 s
  the first time to write the 18 L1 copies).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_wfi  # noqa: E402

if __name__ == "__main__":
    t0 = time.perf_counter()
    bench_wfi.main(sys.argv[1:])
    print(f"\nmake bench: {time.perf_counter() - t0:.0f} s")
