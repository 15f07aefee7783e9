"""The EXCAM II&T file set: combined files named after the data set as II&T names them (frames
``CGI_EXCAM_L1_XXXXXXi.fits`` give ``CGI_EXCAM_L1_XXXXXX_mean_comb_image.fits``, cgi_iit_drp's
IIT_L1_to_L2b_Processing/README.md), the L1 header keywords carried into every file, and a run with the
calibration maps that prints neither a FITS HIERARCH warning nor dask's large-graph warning."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

import detflow
from detflow.io.exporters import excam_dataset_name, export_excam_fits
from detflow.sim.excam import ExcamSimConfig, simulate_excam

IDS = [f"000001234{i}" for i in range(3)]  # one II&T data set, XXXXXX = 000001234, frames i = 0, 1, 2
SET = "CGI_EXCAM_L1_000001234"
KINDS = ("mean_comb_image", "mean_comb_bpmap", "median_comb_image", "median_comb_bpmap")


@pytest.mark.parametrize("names, expected", [
    ([f"CGI_EXCAM_L1_{i}.fits" for i in IDS], SET),  # II&T's data set of frames XXXXXXi
    (["CGI_EXCAM_L1_0000012345.fits"], "CGI_EXCAM_L1_0000012345"),  # one file: its own name
    (["CGI_EXCAM_L1_0000012345.fits", "CGI_EXCAM_L1_0000012399.fits"], "CGI_EXCAM_L1_00000123"),
    ([f"excam_sim_L1_{k:04d}.fits" for k in range(12)], "excam_sim_L1_00"),  # the simulator's names
    # corgidrp's cgi_<visit>_<time>_l1_: the visit, not part of a time stamp
    (["cgi_0200001001001001001_20240403t105401_l1_.fits", "cgi_0200001001001001001_20240403t105406_l1_.fits"],
     "cgi_0200001001001001001"),
    (["/a/run1_dark.fits", "/b/run1_flat.fits"], "run1"),
    (["abc.fits", "xyz.fits"], "excam"),  # nothing shared
])  # fmt: skip
def test_data_set_name_from_the_l1_names(names, expected):
    assert excam_dataset_name(names) == expected


@pytest.fixture(scope="module")
def iit_run(tmp_path_factory):
    """Three simulated frames with every calibration map, under II&T names, run with export_dir while the
    FITS HIERARCH warning and dask's large-graph warning are errors."""
    tmp = tmp_path_factory.mktemp("iit_set")
    sim = simulate_excam(tmp / "sim", ExcamSimConfig(n_frames=3, em_gain=100.0, exptime=5.0, seed=3))
    l1 = tmp / "l1"
    l1.mkdir()
    for f, i in zip(sim.l1_files, IDS):
        shutil.copy(f, l1 / f"CGI_EXCAM_L1_{i}.fits")
    job = yaml.safe_load(sim.config.read_text())
    job = {k: (str(sim.outdir / v) if k in sim.calib else v) for k, v in job.items()}
    assert len(sim.calib) == 6  # the maps (8 MB each) that went into the graph
    job.update(input=str(l1), output=str(tmp / "out.zarr"), export_dir=str(tmp / "fits"))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        warnings.filterwarnings("error", category=fits.verify.VerifyWarning)  # "a HIERARCH card will be created"
        warnings.filterwarnings("error", message="Sending large graph", category=UserWarning)  # distributed's
        detflow.run(job, progress=False)
    return tmp, l1, record


def test_no_hierarch_or_large_graph_warning(iit_run):
    _, _, record = iit_run
    seen = [f"{w.category.__name__}: {w.message}" for w in record]
    assert not [s for s in seen if "HIERARCH" in s or "large graph" in s], seen


def test_combined_files_are_named_after_the_data_set(iit_run):
    tmp, _, _ = iit_run
    names = {p.name for p in (tmp / "fits").iterdir()}
    want = {f"{SET}_{k}.fits" for k in KINDS}
    want |= {f"CGI_EXCAM_L1_{i}_{k}.fits" for i in IDS for k in ("L2a_image", "L2a_bpmap", "L2b_image", "L2b_bpmap")}
    assert names == want


def _l1_cards(path: Path) -> tuple[fits.Header, fits.Header]:
    with fits.open(path) as h:
        return h[0].header.copy(), h[1].header.copy()


def test_l1_keywords_are_carried_into_every_file(iit_run):
    tmp, l1, _ = iit_run
    pri_keys = ("VISITID", "TELESCOP", "INSTRUME", "PROGNUM", "SIMFRAME")
    ext_keys = ("SCTSRT", "SCTEND", "EMGAIN_C", "ARRTYPE", "EACQ_ROW", "KGAINPAR")
    firsts = _l1_cards(l1 / f"CGI_EXCAM_L1_{IDS[0]}.fits")
    for out in sorted((tmp / "fits").iterdir()):
        src = next((f"CGI_EXCAM_L1_{i}.fits" for i in IDS if out.name.startswith(f"CGI_EXCAM_L1_{i}_")), None)
        pri, ext = _l1_cards(l1 / src) if src else firsts  # a combined file: the set's first frame
        level = "L2a" if "_L2a_" in out.name else "L2b"
        with fits.open(out) as h:
            assert len(h) == 2 and h[1].data.shape == (1024, 1024)
            for k in pri_keys:
                assert h[0].header[k] == pri[k], (out.name, k)
            for k in ext_keys:
                assert h[1].header[k] == ext[k], (out.name, k)
            assert h[1].header["EXPTIME"] == ext["EXPTIME"] == 5.0
            for hdr in (h[0].header, h[1].header):  # the level moves on, under II&T's and corgidrp's keyword
                assert hdr["DATA_LEVEL"] == level and hdr["DATALVL"] == level
            assert h[0].header["FILENAME"] == out.name
            assert h[1].header.get("BZERO") is None  # the L1's uint16 scaling is not carried
            if src:
                assert h[0].header["L1FILE"] == src
            else:
                assert h[0].header["NFRAMES"] == 3


def test_export_prefix_names_the_set_and_a_store_exports_again(iit_run, tmp_path):
    tmp, _, _ = iit_run
    written = export_excam_fits(tmp / "out.zarr", tmp_path / "a", prefix="tdd_run")
    assert {p.name for p in written if "comb" in p.name} == {f"tdd_run_{k}.fits" for k in KINDS}
    written = export_excam_fits(tmp / "out.zarr", tmp_path / "b")  # no prefix: from the store's L1 names
    assert {p.name for p in written if "comb" in p.name} == {f"{SET}_{k}.fits" for k in KINDS}
    name = f"{SET}_mean_comb_image.fits"
    with fits.open(tmp / "fits" / name) as a, fits.open(tmp_path / "b" / name) as b:
        np.testing.assert_array_equal(a[1].data, b[1].data)
        assert a[0].header["VISITID"] == b[0].header["VISITID"]
