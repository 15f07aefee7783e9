"""detflow: detector calibration as lazy dask graphs of numba kernels."""

__version__ = "0.1.0"
