"""dq_init: guide window (romancal semantics), reference border, mask, reference read and offset."""

from __future__ import annotations

import asdf
import numpy as np

import detflow
from detflow.io.caldir import open_wfi_references
from detflow.schema import DQ
from detflow.steps.registry import get_step


def test_guide_window_border_mask_and_encoding(tiny_wfi):
    f = tiny_wfi["files"][0]
    with asdf.open(f) as af:
        data = np.array(af["roman"]["data"])
        meta = dict(af["roman"]["meta"])
    meta["guide_star"] = {"window_xstart": 10, "window_xstop": 14, "window_ystart": 20, "window_ystop": 22}
    meta["instrument"] = {"data_encoding_offset": 100}
    ref_read = np.full(data.shape[1:], 7, np.uint16)
    asdf.AsdfFile({"roman": {"data": data, "meta": meta, "reference_read": ref_read}}).write_to(f)
    l1 = detflow.open_l1(f)
    refs = open_wfi_references({"mask": tiny_wfi["caldir"]["mask"]}, 32, (32, 32))
    out = get_step("dq_init")(l1, refs, {"exclude_first": True}).compute()

    pdq = out["pixeldq"].values[0]
    gw, dnu, ref = np.uint32(DQ.GW_AFFECTED_DATA), np.uint32(DQ.DO_NOT_USE), np.uint32(DQ.REFERENCE_PIXEL)
    cols = np.zeros((32, 32), bool)
    cols[:, 10:14] = True
    win = np.zeros((32, 32), bool)
    win[19:23, 9:15] = True  # the window grown by one pixel
    np.testing.assert_array_equal((pdq & gw) != 0, cols | win)
    np.testing.assert_array_equal((pdq & dnu) != 0, win)
    border = np.ones((32, 32), bool)
    border[4:-4, 4:-4] = False
    np.testing.assert_array_equal((pdq & ref) != 0, border)

    np.testing.assert_array_equal(out["data"].values[0], data.astype(np.float32) + 7 - 100)
    gdq = out["groupdq"].values[0]
    assert np.all(gdq[0] == dnu) and not np.any(gdq[1:])
    # Casertano times for read pattern [[0], [1], [2, 3], [4..7], ...] and frame time 3.04 s
    assert np.allclose(out["tbar"].values[0][:4], np.array([0, 1, 2.5, 5.5]) * 3.04)
    assert np.isclose(out["tau"].values[0][3], (4 + 3 * 7 / 24) * 3.04)
