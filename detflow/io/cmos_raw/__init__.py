"""CMOS raw calibration trees: discovery, parsing, and ingest into one zarr v3 store per test section.

A test campaign writes bias, dark and flat frames under three section roots
(:data:`detflow.instruments.cmos.SECTIONS`), in attempt directories at any depth::

    TestSection2/20Frames/T-10/0.5s/attempt0/
        configFile.txt          HEIGHT, WIDTH, BIT_DEPTH (FILTER); ``key=value`` or ``key: value``, ``#`` comments
        temperatureLog.csv      one row per frame keyed by FrameNum (dialect sniffed: comma, semicolon, tab, ...)
        frames/frame0.raw       headerless little-endian uint16 (uint8 if BIT_DEPTH <= 8), shape (HEIGHT, WIDTH)
        frames/f1_exp0.5s_T-10.0.raw  ...  or the camera's DarkT-10_exp0.5sAt0f1.raw (detflow.io.cmos_names):
                                           frame number, and set point, exposure, attempt where named

:func:`discover` finds attempts; :func:`read_config` and :func:`read_temperature_log` parse their
files; :func:`ingest_section` validates every frame (size, name, log row, and its metadata: a finite
detector temperature, an exposure time > 0, >= 0 for a bias, no infinite logged number) before any data
are written and writes ``l1/data`` (frame, read, y, x) in the native integer type with the metadata of
:data:`~detflow.instruments.cmos.KEYWORDS` as lower-case coordinates on ``frame`` (and ``path``).
Bad input raises one :class:`DetflowInputError` naming the file, the field and what was expected;
``on_error="skip"`` skips the frame (or the attempt) and lists it in the report instead.

Store layout (``<out>/<caltype>.zarr``)::

    l1/data       (frame, read, y, x) uint16|uint8, zarr chunks (frame_chunk, 1, tile_y, tile_x); attrs
                  units DN, scale_factor 1/data_scale (CF packing: xr.open_zarr gives DN; none if data_scale is 1)
    l1/frame      int64 index; l1/<keyword> coordinates on frame (chunks of COORD_CHUNK)
    l1 attrs      instrument, caltype, section_root, data_scale, height, width, bit_depth, frame_chunk,
                  tile, attempts (config of each attempt, losslessly), history

Ingest tasks read whole-width row strips of ``frame_chunk`` raw files (contiguous reads) and write
whole zarr chunks (a dask chunk is ``frame_chunk`` frames x a multiple of ``tile_y`` rows x the full
width). A store is written under ``<out>.partial-<key>`` (:func:`ingest_key`, a hash of the store, the frames
and the chunks) and renamed into place; a failed ingest removes it, and a re-run of an ingest that was
killed finds its partial store by the key and removes it (logged and listed in the report; another
ingest's partial store of the same output is named, never touched). Re-running on a tree
with new attempts appends only the frames whose ``path`` is not in the store yet: the previous store
is staged by hard links (zarr's local store replaces chunk files, it never writes into them; the
partial last frame-chunk, which the append rewrites, and all metadata are copied), appended to and
swapped in (the previous store moved aside as ``<out>.old-<key>`` between two renames: an ingest that
finds one restores it if ``<out>`` is missing, else removes it, :func:`recover_swap`), so a failed
ingest leaves the previous complete store. Frame order is the ingest order:
attempts by natural order of their path within one ingest, later ingests after earlier ones
(``ds.sortby("path")`` gives an order independent of the ingest history).

``data_scale`` (16 for 12-bit values stored left-shifted in 16 bits) is recorded, never applied to
the stored integers; :func:`open_cmos_section` divides by it, CF readers multiply by ``scale_factor``.

Modules: :mod:`.tree` (discovery, config file, temperature log, frame names), :mod:`.plan` (the validated
frames of one section, nothing written), :mod:`.section` (the store layout, reading back), :mod:`.writer`
(the section-store writer: partial stores, appends, swaps), :mod:`.ingest` (the entry points, under the
output lock), :mod:`.export` (FITS index and per-frame FITS). The file-name grammar is apart, in
:mod:`detflow.io.cmos_names`.
"""

from .export import export_fits, fits_header, read_fits_index, write_fits_index
from .ingest import IngestReport, SectionReport, ingest_section, ingest_tree
from .plan import ON_ERROR, SectionPlan, caltype_of, plan_section
from .section import (
    COORD_CHUNK,
    FRAME_CHUNK,
    GROUP,
    INDEX_NAME,
    TARGET_TASK_BYTES,
    TILE,
    data_attrs,
    open_cmos_section,
)
from .tree import (
    CmosAttempt,
    TemperatureLog,
    config_geometry,
    discover,
    frame_dtype,
    frame_number,
    name_exptime,
    name_temperature,
    natural_key,
    read_config,
    read_temperature_log,
)
from .writer import RAW_INT_CODEC, ingest_key, recover_swap

__all__ = [
    "COORD_CHUNK", "FRAME_CHUNK", "GROUP", "INDEX_NAME", "ON_ERROR", "RAW_INT_CODEC", "TARGET_TASK_BYTES", "TILE",
    "CmosAttempt", "IngestReport", "SectionPlan", "SectionReport", "TemperatureLog", "caltype_of", "config_geometry",
    "data_attrs", "discover", "export_fits", "fits_header", "frame_dtype", "frame_number", "ingest_key",
    "ingest_section", "ingest_tree", "name_exptime", "name_temperature", "natural_key", "open_cmos_section",
    "plan_section", "read_config", "read_fits_index", "read_temperature_log", "recover_swap", "write_fits_index",
]  # fmt: skip
