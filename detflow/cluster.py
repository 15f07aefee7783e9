"""``dask worker --preload detflow.cluster`` (the worker environment and the kernel warm-up: its
:func:`dask_setup`), and the older import path of the cluster factory. The factory is
:mod:`detflow.runtime.cluster`; this name stays because deploy manifests, images and job scripts preload it."""

from .runtime.cluster import *  # noqa: F403
from .runtime.cluster import __all__, dask_setup  # noqa: F401
