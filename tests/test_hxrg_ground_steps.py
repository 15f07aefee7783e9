"""The hxrg_ground steps against plain NumPy references (IO:I's loops, jwst's refpix algorithm where they
coincide), each chunked equal to its eager result over uneven chunkings."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import stats

from detflow.steps import hxrg_ground as sg
from detflow.steps import hxrg_refpix as sr

NY = NX = 64
NOUT = 4


def _reads(nframe=2, nread=3, seed=0) -> xr.Dataset:
    """Reads with per-output/parity offsets, a row gradient, row noise, a few outliers in the reference rows."""
    rng = np.random.default_rng(seed)
    x = np.arange(NX)
    w = NX // NOUT
    data = rng.normal(1000, 3, (nframe, nread, NY, NX))
    data += rng.normal(0, 50, (nframe, nread, NOUT, 2))[..., x // w, x % 2][:, :, None, :]
    data += (
        rng.normal(0, 20, (nframe, nread, NOUT, 2))[..., x // w, x % 2][:, :, None, :] * (np.arange(NY) / NY)[:, None]
    )
    data += rng.normal(0, 5, (nframe, nread, NY))[..., None]
    data[:, :, 1, 5] += 500  # an outlier in a bottom reference row: clipped
    t = np.tile(1.4 + 5.0 * np.arange(nread), (nframe, 1))
    ds = xr.Dataset({"data": (("frame", "read", "y", "x"), data)},
                    coords={"inttime": (("frame", "read"), t), "noutputs": ("frame", [NOUT] * nframe),
                            "gain": ("frame", [2.12] * nframe),
                            "read_nframes": (("frame", "read"), np.ones((nframe, nread))),
                            "y": np.arange(NY), "x": np.arange(NX)})  # fmt: skip
    return ds


# ---- plain NumPy references -------------------------------------------------------------------------
def ioi_ramp(img, nout, compat):
    """IO:I's _remove_ramp (rows 1:4 and NY-4:NY-1, plain means, per output and parity) on one read."""
    out = img.copy()
    w = img.shape[1] // nout
    ab = [1.5, 2055.5] if compat else [2.0, NY - 3.0]  # IO:I's abscissae, or the true mean rows
    for o in range(nout):
        for par in (0, 1):
            cols = [i for i in range(o * w, (o + 1) * w) if i % 2 == par]
            lo = np.mean([img[1:4, i] for i in cols])
            hi = np.mean([img[NY - 4 : NY - 1, i] for i in cols])
            coef = np.polyfit(ab, [lo, hi], 1)
            for i in cols:
                out[:, i] -= np.polyval(coef, np.arange(NY))
    return out[4:-4, 4:-4]


def jwst_top_bottom(img, nout):
    """jwst refpix's top/bottom correction with odd_even_columns: scipy.stats.sigmaclip (3, 3) means of the
    4 bottom and 4 top rows of each amplifier and column parity, averaged."""
    out = img.copy()
    w = img.shape[1] // nout
    for o in range(nout):
        for par in (0, 1):
            sl = slice(o * w + par, (o + 1) * w, 2)
            top = stats.sigmaclip(img[NY - 4 :, sl], 3.0, 3.0)[0].mean()
            bottom = stats.sigmaclip(img[:4, sl], 3.0, 3.0)[0].mean()
            out[:, sl] -= 0.5 * (top + bottom)
    return out


def jwst_side(img, window):
    """jwst refpix's side correction: running median of ``window`` rows of the 4 left and the 4 right
    columns (reflected ends), averaged, subtracted from every row."""

    def median_filter(data):
        h = window // 2
        refl = np.concatenate([data[h:0:-1], data, data[-2 : -(h + 2) : -1]])
        return np.array([np.median(refl[i : i + window]) for i in range(data.shape[0])])

    side = 0.5 * (median_filter(img[:, 0:4]) + median_filter(img[:, NX - 4 :]))
    return img - side[:, None]


def gaussian_column(img, sigma, skip):
    cols = list(range(1 if skip else 0, 4)) + list(range(NX - 4, NX - (1 if skip else 0)))
    mean = img[:, cols].mean(axis=1)
    r = int(4.0 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    smooth = np.convolve(np.pad(mean, r, mode="symmetric"), k / k.sum(), mode="valid")
    return img - smooth[:, None]


# ---- tests ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compat", [False, True])
def test_ramp_is_ioi_remove_ramp_with_true_or_compat_rows(compat):
    ds = _reads()
    out = sr.hxrg_refpix(ds, None, sr.RefPixParams(mode="ramp", clip_sigma=None, compat_rows=compat))
    ref = np.array([[ioi_ramp(ds["data"].values[f, r], NOUT, compat) for r in range(3)] for f in range(2)])
    np.testing.assert_allclose(out["data"].values, ref, rtol=0, atol=1e-9)
    assert out["y"].values[0] == 4 and out.sizes["y"] == NY - 8  # stripped, detector coordinates kept


def test_constant_off_and_median_column_are_jwst_refpix():
    ds = _reads()
    p = sr.RefPixParams(mode="constant_off", skip_border=False, strip=False)
    out = sr.hxrg_refpix(ds, None, p)
    for f in range(2):
        for r in range(3):
            np.testing.assert_allclose(out["data"].values[f, r], jwst_top_bottom(ds["data"].values[f, r], NOUT),
                                       rtol=0, atol=1e-9)  # fmt: skip
    side = sr.hxrg_refpix(out, None, sr.RefPixParams(mode="column", column_smoothing="median", window=11,
                                                     skip_border=False, strip=False))  # fmt: skip
    want = jwst_side(out["data"].values[1, 2], 11)
    np.testing.assert_allclose(side["data"].values[1, 2], want, rtol=0, atol=1e-9)


def test_the_outlier_is_clipped_and_constant_is_one_mean():
    ds = _reads()
    clipped = sr.hxrg_refpix(ds, None, sr.RefPixParams(mode="constant", strip=False))
    plain = sr.hxrg_refpix(ds, None, sr.RefPixParams(mode="constant", strip=False, clip_sigma=None))
    img = ds["data"].values[0, 0]
    rows = np.r_[1:4, NY - 4 : NY - 1]
    np.testing.assert_allclose(img - plain["data"].values[0, 0], img[rows].mean(), rtol=1e-12)
    vals = img[rows].ravel()
    np.testing.assert_allclose(img - clipped["data"].values[0, 0], stats.sigmaclip(vals, 3, 3)[0].mean(), rtol=1e-12)


def test_gaussian_column_is_ioi_smoothing():
    ds = _reads()
    out = sr.hxrg_refpix(ds, None, sr.RefPixParams(mode="column", strip=False))
    np.testing.assert_allclose(out["data"].values[0, 1], gaussian_column(ds["data"].values[0, 1], 50**0.5, True),
                               rtol=0, atol=1e-9)  # fmt: skip


@pytest.mark.parametrize("frames,tiles", [((1, 1), ((20, 44), (7, 57))), ((2,), ((64,), (1, 30, 33)))])
def test_each_step_chunked_equals_eager(frames, tiles):
    ds = _reads(nframe=2, nread=4)
    ds = ds.assign_coords(seqnum_m=(("frame", "read"), [[2, 1, 1, 2]] * 2),
                          seqnum_n=(("frame", "read"), [[2, 1, 2, 1]] * 2))  # fmt: skip
    lazy_in = ds.chunk({"frame": frames, "read": (1, 3), "y": tiles[0], "x": tiles[1]})
    for mode in sr.MODES:
        for smoothing in ("gaussian", "median"):
            p = sr.RefPixParams(mode=mode, column_smoothing=smoothing)
            eager, lazy = sr.hxrg_refpix(ds, None, p), sr.hxrg_refpix(lazy_in, None, p)
            assert lazy["data"].chunks is not None
            np.testing.assert_array_equal(lazy["data"].values, eager["data"].values, err_msg=mode)
    stripped = sr.hxrg_refpix(ds, None, sr.RefPixParams(mode="full"))
    nonlin = xr.Dataset({"nonlin": (("order", "y", "x"), np.stack([np.zeros((56, 56)), np.ones((56, 56)),
                                                                    np.full((56, 56), 1e-5)]))})  # fmt: skip
    for mode in ("cds", "fowler", "ramp"):
        for refs in (None, nonlin):
            p = sg.CombineParams(mode=mode)
            eager = sg.hxrg_combine(stripped, refs, p)
            lazy = sg.hxrg_combine(stripped.chunk({"frame": frames, "y": (50, 6), "x": (3, 53)}), refs, p)
            assert lazy["data"].chunks is not None
            for v in eager.data_vars:
                np.testing.assert_array_equal(lazy[v].values, eager[v].values, err_msg=f"{mode} {v}")


def test_cds_fowler_and_their_exposure_times():
    ds = _reads(nframe=1, nread=6)
    m, n = [1, 2, 1, 2, 1, 2], [1, 3, 2, 1, 3, 2]  # interleaved on purpose: pairing is by SEQNUM_N
    ds = ds.assign_coords(seqnum_m=(("frame", "read"), [m]), seqnum_n=(("frame", "read"), [n]),
                          inttime=(("frame", "read"), [[1.0, 12.0, 2.0, 11.0, 3.0, 13.5]]))  # fmt: skip
    raw = ds["data"].values[0]
    cds = sg.hxrg_combine(ds, None, sg.CombineParams(mode="cds"))
    np.testing.assert_allclose(cds["data"].values[0], raw[5] - raw[0])
    assert cds["exptime"].values[0] == 12.5 and cds["data"].attrs["units"] == "DN"
    fow = sg.hxrg_combine(ds, None, sg.CombineParams(mode="fowler"))
    np.testing.assert_allclose(fow["data"].values[0], ((raw[3] - raw[0]) + (raw[5] - raw[2]) + (raw[1] - raw[4])) / 3)
    assert fow["exptime"].values[0] == pytest.approx((10 + 10 + 10.5) / 3 + 1.265)
    two = sg.hxrg_combine(ds, None, sg.CombineParams(mode="fowler", fowler_pairs=2, read_time=0))
    np.testing.assert_allclose(two["data"].values[0], ((raw[3] - raw[0]) + (raw[5] - raw[2])) / 2)
    np.testing.assert_allclose(cds["rate"].values[0], (raw[1] - raw[0]) / 11.0)  # IO:I: first two files
    with pytest.raises(ValueError, match=r"equal numbers of pedestal \(SEQNUM_M 1\) and signal .* got 3 and 2"):
        sg.fowler_indices([1, 2, 1, 2, 1], [1, 1, 2, 2, 3])


def test_ramp_slope_of_a_noiseless_line_and_nonlinearity_formula():
    ds = _reads(nframe=1, nread=5)
    rate = np.random.default_rng(1).uniform(0, 200, (NY, NX))
    t = ds["inttime"].values[0]
    ds["data"] = (("frame", "read", "y", "x"), (500 + rate[None] * t[:, None, None])[None])
    slope = sg.hxrg_combine(ds, None, sg.CombineParams(mode="ramp", jump_detection=False))
    np.testing.assert_allclose(slope["data"].values[0], rate, rtol=1e-5, atol=2e-5)  # float32 reads in the fit
    assert slope["data"].attrs["units"] == "DN / s"
    c = np.stack([np.zeros((NY, NX)), np.full((NY, NX), 1.01), np.full((NY, NX), 2e-6)])
    out = sg.hxrg_combine(ds, xr.Dataset({"nonlin": (("order", "y", "x"), c)}), sg.CombineParams(mode="cds"))
    d = ds["data"].values[0, -1] - ds["data"].values[0, 0]
    x = d + rate * t[0]
    np.testing.assert_allclose(out["data"].values[0], d * (1.01 * x + 2e-6 * x**2) / x, rtol=1e-10)
