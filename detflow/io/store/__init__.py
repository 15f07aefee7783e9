"""The run's output: one zarr v3 store, a group per product, complete or absent.

- :mod:`.writer`: :class:`StoreWriter`, product groups written as a template then region by region;
- :mod:`.resume`: the markers a partial store keeps so that a killed run resumes (regions done, inputs);
- :mod:`.commit`: the atomic commit (metadata consolidated, the store swapped into place);
- :mod:`.atomic`: :func:`atomic_write` / :func:`atomic_path`, every other file detflow writes;
- :mod:`.codecs`: the zarr codecs and shard layout, and the whole-shard encoder of region writes;
- :mod:`.tables`: event tables (one row per event, a 1-D array per column) next to arrays;
- :mod:`.output`: refusals before any work (output exists, locked, read-only) and what a detflow store is;
- :mod:`.read`: :func:`open_store`, :func:`store_summary`.
"""

from .atomic import TEMP_GLOB, atomic_path, atomic_write, temp_leftovers
from .commit import commit_store, consolidate, recover_swap, swap_into_place
from .output import STORE_MARKS, WRITE_ERRNOS, OutputWriteError, check_output, is_detflow_store, store_attrs
from .read import open_store, store_summary
from .resume import REGIONS, file_identity, product_inputs
from .tables import TABLE_ATTR, event_table, is_table, open_table, read_table
from .writer import StoreWriter, regular_chunks

__all__ = ["REGIONS", "STORE_MARKS", "TABLE_ATTR", "TEMP_GLOB", "WRITE_ERRNOS", "OutputWriteError", "StoreWriter",
           "atomic_path", "atomic_write", "check_output", "commit_store", "consolidate", "event_table", "file_identity",
           "is_detflow_store", "is_table", "open_store", "open_table", "product_inputs", "read_table", "recover_swap",
           "regular_chunks", "store_attrs", "store_summary", "swap_into_place", "temp_leftovers"]  # fmt: skip
