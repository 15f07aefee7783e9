"""Opening FITS inputs that may be damaged: one place that turns astropy's ways of failing into one line.

A FITS input can be missing, not FITS at all, cut inside a header (astropy then warns and drops the HDU
instead of raising) or cut inside the data (astropy reads the header and fails, or pads, only when the
pixels are read). :func:`open_fits` opens a file with every header read, turns the first two into a
:class:`~detflow.errors.DetflowInputError` / :class:`~detflow.errors.CorruptInputError` naming the file
and the HDU, and any exception astropy raises while the caller reads headers into a ``CorruptInputError``;
:func:`check_data_complete` finds the third before a task reads the pixels. Readers of every family
(EXCAM L1, plain CCD frames, ramp cubes, ground HxRG reads) use them, so a damaged file gives the same
message whichever pipeline meets it (and ``on_error: skip`` can leave it out).
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from astropy.io import fits

from ..errors import CorruptInputError, DetflowInputError

__all__ = ["open_fits", "image_hdus", "data_end", "check_data_complete"]


@contextmanager
def open_fits(path: str | Path, what: str = "FITS file") -> Iterator[fits.HDUList]:
    """The open HDU list of ``path`` (no memory map; every header read), closed on exit.

    Raises ``DetflowInputError`` for a missing file ("an existing ``what``"), ``CorruptInputError`` for a
    file astropy cannot open, one that ends inside a header, or one whose headers make astropy raise while
    the ``with`` body reads them. Errors the body raises itself (``DetflowInputError``) pass unchanged."""
    path = Path(path)
    if not path.is_file():
        raise DetflowInputError(path, "file", f"an existing {what}", "no such file")
    size = path.stat().st_size
    try:
        # astropy warns (and drops the HDU) for a header cut short: the warnings are the evidence, not output
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hdul = fits.open(path, memmap=False)
            len(hdul)  # reads every header now, so a cut one shows here
    except Exception as exc:  # astropy raises many types for a damaged file
        raise CorruptInputError(path, "file", "a readable FITS file", f"{type(exc).__name__}: {exc}") from None
    with hdul:
        cut = next((str(w.message) for w in caught if "Error validating header" in str(w.message)), None)
        if cut is not None:
            hdu = re.search(r"HDU #(\d+)", cut)
            raise CorruptInputError(path, f"header of HDU {hdu.group(1) if hdu else len(hdul)}",
                                    "a complete FITS header (2880-byte blocks)",
                                    f"a file of {size} bytes that ends inside it (truncated)")  # fmt: skip
        try:
            yield hdul
        except DetflowInputError:
            raise
        except Exception as exc:
            raise CorruptInputError(path, "file", "a readable FITS file", f"{type(exc).__name__}: {exc}") from None


def image_hdus(hdul: fits.HDUList, naxis: tuple[int, ...] = (2,)) -> list[int]:
    """Indices of the image HDUs whose ``NAXIS`` is one of ``naxis``."""
    return [i for i, h in enumerate(hdul) if getattr(h, "is_image", False) and h.header.get("NAXIS", 0) in naxis]


def hdu_shape(hdul: fits.HDUList, idx: int) -> tuple[int, ...]:
    """The array shape of HDU ``idx`` from its header (NumPy order: ``NAXISn`` first)."""
    header = hdul[idx].header
    return tuple(int(header.get(f"NAXIS{k}", 0)) for k in range(int(header.get("NAXIS", 0)), 0, -1))


def data_end(hdul: fits.HDUList, idx: int) -> int:
    """The byte offset where HDU ``idx``'s data ends (0 for a compressed HDU: its size is not its shape's)."""
    if isinstance(hdul[idx], fits.CompImageHDU):
        return 0
    bitpix = abs(int(hdul[idx].header.get("BITPIX", 8)))
    return hdul.fileinfo(idx)["datLoc"] + int(np.prod(hdu_shape(hdul, idx))) * bitpix // 8


def check_data_complete(path: str | Path, hdul: fits.HDUList, idx: int, what: str = "image") -> None:
    """Raise ``CorruptInputError`` when the file ends before HDU ``idx``'s data does (a truncated copy)."""
    path = Path(path)
    size, end = path.stat().st_size, data_end(hdul, idx)
    if size < end:
        shape = "x".join(map(str, hdu_shape(hdul, idx)))
        bitpix = int(hdul[idx].header.get("BITPIX", 0))
        raise CorruptInputError(path, "data", f"{end} bytes for a {shape} BITPIX {bitpix} {what}",
                                f"a file of {size} bytes (truncated)")  # fmt: skip
