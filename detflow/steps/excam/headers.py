"""The FITS header keywords the EXCAM steps read from each frame (the coronagraph IWA of the cosmic-ray
step, the frame selection): the keys (:data:`HEADER_KEYS`, :func:`header_keys`), the cards a fused task is
handed (:func:`header_cards`) and each frame's value of one keyword (:func:`header_values`)."""

from __future__ import annotations

import xarray as xr
from astropy.io import fits

# the FITS keywords the steps read from each frame's headers (iwa_circles, excam_frame_select; plus the
# keys of its header_range): the fused chain hands its tasks these cards only (header_cards)
HEADER_KEYS = (
    "LSAMNAME",
    "CFAMNAME",
    "DPAMNAME",
    "EACQ_ROW",
    "EACQ_COL",
    "OVEREXP",
    "Z2VAR",
    "Z3VAR",
    "Z2RES",
    "Z3RES",
)


def header_keys(params: dict) -> set[str]:
    """:data:`HEADER_KEYS` and the keywords of the job's ``excam_frame_select.header_range``."""
    return set(HEADER_KEYS) | set(params.get("excam_frame_select", {}).get("header_range", {}))


def header_cards(inputs: list[dict], keys: set[str]) -> list[dict]:
    """``inputs`` (the L1 reader's records) with each header reduced to the cards of ``keys`` (and any
    HIERARCH card): what the steps read, at a few hundred bytes per frame instead of ~17 kB."""
    keep = {k.upper() for k in keys}
    out = []
    for item in inputs:
        texts = []
        for text in item.get("fits_headers", []):
            kept, last = [], False
            for c in (text[i : i + 80] for i in range(0, len(text), 80)):
                # a long string value goes on in CONTINUE cards: keep those of a kept card
                last = (last and c.startswith("CONTINUE")) or c[:8].rstrip() in keep or c.startswith("HIERARCH")
                if last:
                    kept.append(c)
            texts.append("".join(kept))
        out.append(dict(item, fits_headers=texts))
    return out


def header_values(ds: xr.Dataset, key: str) -> list:
    """The value of FITS keyword ``key`` in each frame's headers (extension first), None if absent."""
    values = []
    for item in ds.attrs.get("inputs", []):
        value = None
        for text in reversed(item.get("fits_headers", [])):  # the image HDU last in the file: search it first
            h = fits.Header.fromstring(text)
            if key in h:
                value = h[key]
                break
        values.append(value)
    return values
