"""The simulator's FITS files: the L1 headers (corgidrp 5.1.1's L1 header definition with the values the
simulator knows: exposure, gains, times, names; :func:`_headers`), the L1 frame files and the calibration
maps."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
from astropy.io import fits

from detflow.instruments import roman_excam

from .config import ExcamSimConfig

_MJD0 = _dt.datetime(1858, 11, 17)


# L1 header keywords with the values of corgidrp's L1 header definition (corgidrp 5.1.1
# ``data/header_formats/l1.csv``, as ``mocks.create_default_L1_headers`` fills them), minus the
# structural FITS cards; the simulator overrides the ones it knows (exposure, gains, times, names).
_PRIMARY_CARDS = {
    'VISITID': '0200001001001001001', 'CDMSVERS': '2.1.0', 'FSWDVERS': '1.1.5.1', 'MOCK': True, 'TELESCOP': 'ROMAN',
    'INSTRUME': 'CGI', 'DETECTOR': 'EXCAM', 'ORIGIN': 'SSC', 'FILETIME': '2024-04-03T10:54:01.932', 'DATAVERS': 1,
    'PROGNUM': '02000', 'EXECNUM': '01', 'CAMPAIGN': '001', 'SEGMENT': '001', 'OBSNUM': '001', 'VISNUM': '001',
    'CPGSFILE': 'campaign_0200001001001001001.xml', 'AUXFILE': 'aux_0200001001001001001.txt',
    'VISTYPE': 'CGIVST_TDD_OBS', 'TARGET': 'SIMULATED', 'RA': 0.0, 'DEC': 0.0, 'EQUINOX': 2000.0, 'RAPM': 0.0,
    'DECPM': 0.0, 'PSFREF': 0, 'OPGAIN': '1000', 'PHTCNT': 'AUTO', 'FRAMET': '30', 'PA_V3': 0.0, 'PA_APER': 0.0,
    'RA_BORE': 0.0, 'DEC_BORE': 0.0, 'RA_APER': 0.0, 'DEC_APER': 0.0, 'SVB_1': 0.0, 'SVB_2': 0.0, 'SVB_3': 0.0,
    'ROLL': 0.0, 'PITCH': 0.0, 'YAW': 0.0, 'FILENAME': 'cgi_0200001001001001001_20240403t105401_l1_.fits',
    'OBSNAME': 'SCI', 'WBJ_1': 0.0, 'WBJ_2': 0.0, 'WBJ_3': 0.0,
}  # fmt: skip
_IMAGE_CARDS = {
    'BUNIT': 'DN', 'ARRTYPE': 'SCI', 'SCTSRT': '2025-02-16T00:00:00', 'SCTEND': '2025-02-16T00:00:00',
    'FRMTYPE': 'NUM', 'ISHOWFSC': 0, 'ISACQ': 0, 'SPBAL': 0, 'ISFLAT': 0, 'SATSPOTS': False, 'STATUS': 0,
    'HVCBIAS': 0, 'OPMODE': 'NONE_DETON_0', 'EXPTIME': 60.0, 'EMGAIN_C': 1.0, 'UNITYG': 0, 'EMGAINA1': 0.0,
    'EMGAINA2': 0.0, 'EMGAINA3': 0.0, 'EMGAINA4': 0.0, 'EMGAINA5': 0.0, 'GAINTCAL': 0.0, 'EXCAMT': 0.0,
    'LOCAMT': 0.0, 'EMGAIN_A': 0.0, 'KGAINPAR': 0.0, 'CYCLES': 0, 'LASTEXP': 0, 'BLNKTIME': 0.0, 'BLNKCYC': 0,
    'EXPCYC': 0, 'OVEREXP': 0, 'NOVEREXP': 0.0, 'ISPC': 0, 'PROXET': 0.0, 'FCMLOOP': '0', 'FCMPOS': 0.0,
    'FSMINNER': '0', 'FSMLOS': '1', 'FSMPRFL': 'FSM_PROFILE_UNKNOWN', 'FSMRSTR': 0, 'FSMSG1': 0.0, 'FSMSG2': 0.0,
    'FSMSG3': 0.0, 'FSMX': 50.0, 'FSMY': 50.0, 'EACQ_ROW': 0.0, 'EACQ_COL': 0.0, 'SB_FP_DX': 0.0, 'SB_FP_DY': 0.0,
    'SB_FS_DX': 0.0, 'SB_FS_DY': 0.0, 'DMZLOOP': '0', '1SVALID': 1, 'Z2AVG': 0.0, 'Z2RES': 0.0, 'Z2VAR': 0.0,
    'Z3AVG': 0.0, 'Z3RES': 0.0, 'Z3VAR': 0.0, '10SVALID': 1, 'Z4AVG': 0.0, 'Z4RES': 0.0, 'Z5AVG': 0.0, 'Z5RES': 0.0,
    'Z6AVG': 0.0, 'Z6RES': 0.0, 'Z7AVG': 0.0, 'Z7RES': 0.0, 'Z8AVG': 0.0, 'Z8RES': 0.0, 'Z9AVG': 0.0, 'Z9RES': 0.0,
    'Z10AVG': 0.0, 'Z10RES': 0.0, 'Z11AVG': 0.0, 'Z11RES': 0.0, 'Z12AVG': 0.0, 'Z13AVG': 0.0, 'Z14AVG': 0.0,
    'SPAM_H': 0.0, 'SPAM_V': 0.0, 'SPAMNAME': 'OPEN', 'SPAMSP_H': 0.0, 'SPAMSP_V': 0.0, 'FPAM_H': 0.0, 'FPAM_V': 0.0,
    'FPAMNAME': 'HLC12_C2R1', 'FPAMSP_H': 0.0, 'FPAMSP_V': 0.0, 'LSAM_H': 0.0, 'LSAM_V': 0.0, 'LSAMNAME': 'OPEN',
    'LSAMSP_H': 0.0, 'LSAMSP_V': 0.0, 'FSAM_H': 0.0, 'FSAM_V': 0.0, 'FSAMNAME': 'R1C1', 'FSAMSP_H': 0.0,
    'FSAMSP_V': 0.0, 'CFAM_H': 0.0, 'CFAM_V': 0.0, 'CFAMNAME': '1F', 'CFAMSP_H': 0.0, 'CFAMSP_V': 0.0, 'DPAM_H': 0.0,
    'DPAM_V': 0.0, 'DPAMNAME': 'IMAGING', 'DPAMSP_H': 0.0, 'DPAMSP_V': 0.0, 'DATETIME': '2025-02-16T00:00:00',
    'FTIMEUTC': '2025-02-16T00:00:00', 'MJDSRT': 60722.0, 'MJDEND': 60722.00069, 'FILE0': 'simulated',
    'DATALVL': 'L1', 'MISSING': 0,
}  # fmt: skip


def _iso(t: _dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def _mjd(t: _dt.datetime) -> float:
    return (t - _MJD0).total_seconds() / 86400.0


def _headers(cfg: ExcamSimConfig, k: int, filename: str) -> tuple[fits.Header, fits.Header]:
    geom = cfg.geom
    interval = cfg.frame_interval if cfg.frame_interval is not None else (
        cfg.exptime + geom.frame_rows * roman_excam.ROW_READ_TIME)  # fmt: skip
    start = _dt.datetime.fromisoformat(cfg.start_time) + _dt.timedelta(seconds=k * interval)
    end = start + _dt.timedelta(seconds=cfg.exptime)
    pri = fits.Header()
    for key, v in _PRIMARY_CARDS.items():
        pri[key] = v
    pri["HIERARCH DATA_LEVEL"] = roman_excam.DATA_LEVEL
    pri.update({"FILETIME": _iso(start), "VISTYPE": cfg.vistype, "OPGAIN": f"{cfg.em_gain:g}",
                "PHTCNT": "FALSE", "FRAMET": f"{cfg.exptime:g}", "FILENAME": filename})  # fmt: skip
    pri["SIMULATR"] = ("detflow.sim.excam", "simulated EXCAM frame with known truth")
    pri["SIMSEED"] = (int(cfg.seed), "simulator seed")
    pri["SIMFRAME"] = (int(k), "frame index k (random stream (1, k))")
    ext = fits.Header()
    for key, v in _IMAGE_CARDS.items():
        ext[key] = v
    ny, nx = cfg.image_shape
    ext.update({"ARRTYPE": geom.name, "SCTSRT": _iso(start), "SCTEND": _iso(end), "DATETIME": _iso(start),
                "FTIMEUTC": _iso(end), "MJDSRT": _mjd(start), "MJDEND": _mjd(end),
                "EACQ_ROW": float(ny // 2), "EACQ_COL": float(nx // 2), "FILE0": filename})  # fmt: skip
    ext["EXPTIME"] = (float(cfg.exptime), "exposure time (s)")
    ext["EMGAIN_C"] = (float(cfg.em_gain), "commanded EM gain")
    ext["EMGAIN_A"] = (float(cfg.em_gain), "actual EM gain")
    ext["KGAINPAR"] = (float(cfg.eperdn), "k gain (e-/DN)")
    ext["DATALVL"] = (roman_excam.DATA_LEVEL, "data level")
    return pri, ext


def _write_fits_frame(path: Path, data: np.ndarray, pri: fits.Header, ext: fits.Header) -> None:
    hdul = fits.HDUList([fits.PrimaryHDU(header=pri), fits.ImageHDU(data, header=ext, name="SCI")])
    hdul.writeto(path)


def _write_fits_map(path: Path, data: np.ndarray, bunit: str, what: str) -> None:
    hdu = fits.PrimaryHDU(data)
    hdu.header["BUNIT"] = bunit
    hdu.header["CONTENT"] = what
    hdu.header["SIMULATR"] = "detflow.sim.excam"
    hdu.writeto(path)
