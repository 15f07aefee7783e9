"""detflow: detector calibration as lazy dask graphs of numba kernels.

Python API (the CLI calls the same functions)::

    import detflow
    l1 = detflow.open_l1("exposures/*.asdf")          # lazy (frame, read, y, x)
    tree = detflow.run("job.yaml")                     # runs on a LocalCluster, returns the store
    products = detflow.build("job.yaml")               # the lazy products, nothing computed
"""

from ._version import __version__
from .errors import DetflowInputError  # noqa: E402
from .io import open_l1  # noqa: E402
from .io.store import open_store  # noqa: E402
from .runtime.job import load_job  # noqa: E402
from .runtime.run import build, run  # noqa: E402

__all__ = ["DetflowInputError", "__version__", "build", "load_job", "open_l1", "open_store", "run"]
