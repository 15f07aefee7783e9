"""``make bench``: every benchmark, at real sizes, with the reference tools measured in the same run."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_wfi  # noqa: E402

if __name__ == "__main__":
    bench_wfi.main(sys.argv[1:])
