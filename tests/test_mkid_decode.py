"""MKID ``.bin`` decoding (issue 17): the numba decoder against a plain NumPy decoder (bit for bit), against
words packed by hand from the issue's bit layout, and against the simulator's truth; beammaps in mkidcore's
text format; bad input named."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from detflow.errors import CorruptInputError, DetflowInputError
from detflow.instruments import mkid as mi
from detflow.io import mkid_bin as mb
from detflow.kernels import mkid as km
from detflow.sim.mkid import MkidSimConfig, kept_photons, simulate_mkid

CFG = MkidSimConfig(instrument="darkness", seconds=3, rate=6.0, seed=5)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate_mkid(tmp_path_factory.mktemp("mkid") / "bin", CFG)


def numpy_decode(path, second, beam: mb.Beammap, window: mb.Window):
    """A plain NumPy decoder of the issue's layout (no numba): every kept photon in stream order, and the drops."""
    w = np.fromfile(path, dtype=">u8").astype(np.uint64)
    header = (w >> np.uint64(56)) == 0xFF
    packet = np.cumsum(header) - 1  # the packet of each word (-1 before the first header)
    ticks = (w[header] & np.uint64(2**36 - 1)).astype(np.int64)
    year_off = (mb.year_start(second) - window.origin) * 1_000_000
    ph = ~header & (packet >= 0)
    x = (w >> np.uint64(54)).astype(np.int64)
    y = ((w >> np.uint64(44)) & np.uint64(0x3FF)).astype(np.int64)
    off = ((w >> np.uint64(35)) & np.uint64(0x1FF)).astype(np.int64)
    raw_p = ((w >> np.uint64(17)) & np.uint64(0x3FFFF)).astype(np.int64)
    raw_b = (w & np.uint64(0x1FFFF)).astype(np.int64)
    raw_p = np.where(raw_p >= 2**17, raw_p - 2**18, raw_p)
    raw_b = np.where(raw_b >= 2**16, raw_b - 2**17, raw_b)
    real = ph & (x != 511)
    inside = real & (x < beam.ncols) & (y < beam.nrows)
    resid_img, flag_img = beam.images()
    xi, yi = np.minimum(x, beam.ncols - 1), np.minimum(y, beam.nrows - 1)
    mapped = inside & (flag_img[yi, xi] != mi.NO_RESONATOR)
    good = mapped & (flag_img[yi, xi] == 0)
    t = year_off + ticks[np.maximum(packet, 0)] * 500 + off
    kept = good & (t >= window.t_lo) & (t < window.t_hi)
    out = {"pixel": resid_img[yi, xi][kept].astype(np.uint32), "time": t[kept].astype(np.uint64),
           "phase": (raw_p[kept] * (180 / np.pi) / 2**15).astype(np.float32),
           "baseline": (raw_b[kept] * (180 / np.pi) / 2**14).astype(np.float32)}  # fmt: skip
    drops = {"frame_ends": int((ph & (x == 511)).sum()), "dropped_unmapped": int((real & ~mapped).sum()),
             "dropped_flagged": int((mapped & ~good).sum()), "dropped_out_of_range": int((good & ~kept).sum()),
             "packets": int(header.sum()), "orphan_words": int((~header & (packet < 0)).sum())}  # fmt: skip
    return out, drops


def _decode(path, second, beam, window):
    counts, stats = mb.scan_file(path, second, beam.slot_map(), beam.good.size, window)
    return mb.decode_file(path, second, beam.slot_map(), beam.good, window, counts), counts, stats


def test_kernel_equals_a_numpy_decoder_bit_for_bit(sim):
    beam = mb.read_beammap(sim.beammap, "darkness")
    window = mb.Window(CFG.start, 300_000, 2_700_000)  # cuts inside the first and the last file
    for path in sim.files:
        second = int(path.stem)
        got, counts, stats = _decode(path, second, beam, window)
        ref, drops = numpy_decode(path, second, beam, window)
        order = np.lexsort((ref["time"], ref["pixel"]))  # the store's order: resonator, then time
        for k in ref:
            assert got[k].dtype == ref[k].dtype
            np.testing.assert_array_equal(got[k], ref[k][order], err_msg=k)  # bit for bit (floats too)
        assert stats[km.PHOTONS] == ref["pixel"].size == counts.sum()
        for k, name in enumerate(km.STAT_NAMES):
            if name in drops:
                assert stats[k] == drops[name], name
    assert stats[km.FRAME_ENDS] > 0 and stats[km.OUT_OF_RANGE] > 0  # the paths above were taken


def test_words_packed_by_hand_from_the_issue_layout(tmp_path):
    """One packet, words built from the issue's bit positions (not the simulator): header tick, a photon with
    negative phase and baseline at the extremes of their widths, a frame-closing x = 511."""
    sec = 1_700_000_000
    year0 = 1_672_531_200  # 2023-01-01T00:00:00Z
    tick = (sec - year0) * 2000 + 1234
    header = (0xFF << 56) | (221 << 48) | (4095 << 36) | tick
    photon1 = (3 << 54) | (5 << 44) | (499 << 35) | ((2**18 - 1) << 17) | (2**16)  # phase -1, baseline -65536
    photon2 = (4 << 54) | (0 << 44) | (0 << 35) | ((2**17 - 1) << 17) | (2**16 - 1)  # phase, baseline at their max
    closer = (511 << 54) | (511 << 44)
    path = tmp_path / f"{sec}.bin"
    path.write_bytes(struct.pack(">4Q", header, photon1, photon2, closer))
    rows = np.array([[10, 0, 3, 5], [11, 0, 4, 0], [12, 1, 6, 6]])
    beam = mb.Beammap(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], 80, 125, "hand")
    got, counts, stats = _decode(path, sec, beam, mb.Window(sec, 0, 10**6))
    assert mb.year_start(sec) == year0
    np.testing.assert_array_equal(got["pixel"], [10, 11])
    np.testing.assert_array_equal(got["time"], [1234 * 500 + 499, 1234 * 500])
    assert got["phase"][0] == np.float32(-1 * 180 / np.pi / 2**15)
    assert got["baseline"][0] == np.float32(-65536 * 180 / np.pi / 2**14)
    assert got["phase"][1] == np.float32((2**17 - 1) * 180 / np.pi / 2**15)
    assert got["baseline"][1] == np.float32((2**16 - 1) * 180 / np.pi / 2**14)
    assert stats[km.PACKETS] == 1 and stats[km.FRAME_ENDS] == 1 and stats[km.PHOTONS] == 2


def test_decoded_photons_equal_the_simulated_list(sim):
    beam = mb.read_beammap(sim.beammap, "darkness")
    window = mb.Window(CFG.start, 0, CFG.seconds * 1_000_000)
    parts, totals = [], np.zeros(km.NSTATS, np.int64)
    for path in sim.files:
        got, _, stats = _decode(path, int(path.stem), beam, window)
        parts.append(got)
        totals += stats
    got = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    truth = kept_photons(sim.truth)
    for k in truth:
        np.testing.assert_array_equal(got[k], truth[k], err_msg=k)
    kind = sim.truth["photon_kind"]
    assert totals[km.FLAGGED] == (kind == 1).sum() > 0
    assert totals[km.UNMAPPED] == (kind == 2).sum() > 0
    assert totals[km.LONG_PACKETS] == 0 and totals[km.ORPHANS] == 0
    # dead time: no two recorded photons of a resonator closer than 10 us; cosmic bursts are in the list
    assert (sim.truth["incident"] > sim.truth["recorded"]).any()
    same = np.diff(got["pixel"].astype(np.int64)) == 0
    assert (np.diff(got["time"].astype(np.int64))[same] >= CFG.deadtime_us).all()
    assert sim.truth["photon_cosmic"][kind == 0].sum() > 0


def test_default_beammaps_follow_mkidcore_layout():
    mec = mi.default_beammap("mec")
    assert mec.shape == (140 * 146, 4) and (mec[:, 1] == 0).all()
    at = {(x, y): r for r, _, x, y in mec}
    assert at[(0, 0)] == 10000 and at[(0, 1)] == 10001 and at[(1, 0)] == 10146  # mec.bmap's first lines
    assert at[(15, 3)] == 20000 + 1 * 146 + 3 and mec[:, 0].max() == 102043
    dk = mi.default_beammap("darkness")
    at = {(x, y): r for r, _, x, y in dk}
    assert at[(1, 0)] == 10001 and at[(0, 25)] == 20000 and dk[:, 0].max() == 51999
    assert mb.read_beammap(None, "xkid").good.size == 10000


def test_beammap_file_and_images(tmp_path):
    path = tmp_path / "b.txt"
    path.write_text("10 0 3.7 5.2\n11 2 3.0 5.0\n12 0 0 0\n13 1 7 9\n")  # 11 flagged under good 10
    beam = mb.read_beammap(path, "darkness")
    resid, flag = beam.images()
    assert resid[5, 3] == 10 and flag[5, 3] == 0  # floored coordinates; the good resonator wins the pixel
    assert flag[9, 7] == 1 and flag[1, 1] == mi.NO_RESONATOR and resid[1, 1] == mi.NO_RESID
    sm = beam.slot_map()
    assert sm[5, 3] == 0 and sm[0, 0] == 1 and sm[9, 7] == -2 and sm[1, 1] == -1
    np.testing.assert_array_equal(beam.good, [10, 12])


@pytest.mark.parametrize(
    "text,field",
    [("10 0 3\n", "beammap"), ("10 0 90 1\n", "line 1: x"), ("10 0 1 1\n10 0 2 2\n", "resID"),
     ("10 0 1 1\n11 0 1 1\n", "pixel x=1 y=1"), ("10 0.5 1 1\n", "line 1: flag"), ("a b c d\n", "beammap")],
)  # fmt: skip
def test_bad_beammaps_are_named(tmp_path, text, field):
    path = tmp_path / "b.txt"
    path.write_text(text)
    with pytest.raises(DetflowInputError) as err:
        mb.read_beammap(path, "darkness")
    assert err.value.field == field and str(err.value).startswith(f"{path}: {field}: expected ")
    with pytest.raises(DetflowInputError, match="no such file"):
        mb.read_beammap(tmp_path / "missing.txt", "darkness")


def test_truncated_and_mistimed_files_are_named(sim, tmp_path):
    beam = mb.read_beammap(sim.beammap, "darkness")
    raw = sim.files[0].read_bytes()
    d = tmp_path / "bad"
    d.mkdir()
    (d / sim.files[0].name).write_bytes(raw[:-3])
    with pytest.raises(CorruptInputError, match="5 after the last whole word"):
        mb.bin_files(d)
    # a header stamped a year off its file's name (the next year's second): named by its byte
    later = d / f"{CFG.start + 366 * 86400}.bin"
    later.write_bytes(raw)
    (d / sim.files[0].name).unlink()
    window = mb.Window(CFG.start, 0, 10**12)
    with pytest.raises(DetflowInputError) as err:
        mb.scan_file(later, int(later.stem), beam.slot_map(), beam.good.size, window)
    assert err.value.field == "header at byte 0: timestamp" and "within 3 s of the file's second" in str(err.value)
    inputs = sim.files[0].read_bytes()
    assert inputs == raw  # nothing modified
    with pytest.raises(DetflowInputError, match="name: expected <unix seconds>.bin"):
        mb.bin_files([str(sim.beammap)])
    with pytest.raises(DetflowInputError, match="start/stop"):
        mb.bin_files(sim.files[0].parent, start=CFG.start + 100, stop=CFG.start + 200)


def test_a_file_changed_between_the_passes_is_refused(sim):
    """The decoding pass is given the first file's counts but reads the second file: it stops at the first
    resonator with more photons than counted (never writing past its rows) and says so."""
    beam = mb.read_beammap(sim.beammap, "darkness")
    window = mb.Window(CFG.start, 0, 10**12)
    counts, _ = mb.scan_file(sim.files[0], CFG.start, beam.slot_map(), beam.good.size, window)
    with pytest.raises(DetflowInputError, match="content: expected the file as it was counted"):
        mb.decode_file(sim.files[1], CFG.start + 1, beam.slot_map(), beam.good, window, counts)
