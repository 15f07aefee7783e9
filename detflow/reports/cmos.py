"""CMOS reports: the figures and tables of the analyses and of the model evaluation, from results computed in
:mod:`detflow.calib` (or read back from a store). Nothing here computes science: the plots draw what the results
hold, the writers write their tables as they are.

The figures are plain ``matplotlib.figure.Figure`` objects (no pyplot), so a caller's backend is left alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..calib.cmos import REJECT, summary_table
from ..calib.cmos_analysis import CLASSES, DegradationResult, StructureResult, frame_temperature
from ..errors import OutputExistsError
from ..io.store.atomic import atomic_write

F8 = np.float64


# ---- analyses: plots and reports ---------------------------------------------------------------------------------
_CLASS_COLOURS = ("#ffffff", "#1f77b4", "#ff7f0e", "#d62728", "#9467bd")


def _group_label(groups: pd.DataFrame, g: int) -> str:
    r = groups.iloc[g]
    return f"{r['filter']} {r['temp']:g} C {r['exptime']:g} s"


def _time_label(unit: str, origin) -> str:
    return f"days since {origin:%Y-%m-%d %H:%M}" if unit == "day" and origin is not None else "frame order"


def plot_trends(result: StructureResult, stat: str = "mean") -> Figure:
    """Per section: ``stat`` against temperature (colour: exposure time) and against time."""
    secs = list(result.frame_stats)
    fig = Figure(figsize=(11, 3.2 * max(1, len(secs))), layout="constrained")
    axes = np.atleast_2d(fig.subplots(max(1, len(secs)), 2, squeeze=False))
    for row, sec in zip(axes, secs):
        df = result.frame_stats[sec]
        T = frame_temperature(df)
        for e, part in df.assign(_T=T).groupby(df["exptime"].round(9)):
            row[0].plot(part["_T"], part[stat], "o", ms=3, label=f"{e:g} s")
            row[1].plot(part["t_days"], part[stat], "o", ms=3, label=f"{e:g} s")
        tr = result.trends[(result.trends["section"] == sec) & (result.trends["stat"] == stat)]
        for _, r in tr.iterrows():
            if np.isfinite(r["slope_per_degC"]):
                x = np.array([r["temp_min"], r["temp_max"]])
                row[0].plot(x, r["intercept_0C"] + r["slope_per_degC"] * x, "k-", lw=0.8)
        row[0].set_xlabel("temperature (deg C)")
        row[1].set_xlabel(_time_label(result.time_unit, result.origin))
        for ax in row:
            ax.set_ylabel(f"{sec} {stat} (DN)")
            ax.legend(fontsize="x-small", title="exptime", title_fontsize="x-small")
    fig.suptitle(f"per-frame {stat} against temperature and time")
    return fig


def plot_structures(result: StructureResult) -> Figure:
    """The flag-count map with the labelled structures, and the flagged pixels per flat against time."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax0, ax1 = fig.subplots(1, 2)
    if result.maps is None:
        ax0.text(0.5, 0.5, "no flats", ha="center")
        return fig
    im = ax0.imshow(result.maps["flag_count"].values, origin="lower", cmap="magma", interpolation="nearest")
    fig.colorbar(im, ax=ax0, label="frames flagged")
    for _, s in result.structures.iterrows():
        ax0.add_patch(Rectangle((s["x0"] - 0.5, s["y0"] - 0.5), s["x1"] - s["x0"] + 1, s["y1"] - s["y0"] + 1,
                                fill=False, ec="cyan", lw=1))  # fmt: skip
        ax0.text(s["x1"] + 1, s["y1"] + 1, str(int(s["label"])), color="cyan", fontsize=8)
    ax0.set_title(f"new structures ({len(result.structures)})")
    ax0.set_xlabel("x")
    ax0.set_ylabel("y")
    ff = result.flat_frames
    for g, part in ff[~ff["is_reference"]].groupby("group"):
        ax1.plot(part["t_days"], part["n_flagged"], "o-", ms=3, label=_group_label(result.groups, int(g)))
    ax1.set_xlabel(_time_label(result.time_unit, result.origin))
    ax1.set_ylabel(f"pixels beyond {result.params.get('nsigma', '')} sigma")
    ax1.legend(fontsize="x-small")
    return fig


def plot_degradation(result: DegradationResult) -> dict[str, Figure]:
    """``outliers_vs_time`` (outliers per frame, per group and per class), ``class_map`` (the most severe
    class of each pixel over the groups, and its peak deviation) and ``deviation_hist``."""
    figs = {}
    fr = result.frames[~result.frames["is_reference"]]
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax0, ax1 = fig.subplots(1, 2)
    for g, part in fr.groupby("group"):
        part = part.sort_values("t_days")
        ax0.plot(part["t_days"], part["n_outliers"], "o-", ms=3, label=_group_label(result.groups, int(g)))
    ax0.set_ylabel("outlier pixels")
    ax0.legend(fontsize="x-small")
    ax0.set_title("outliers per frame, by group")
    for c, col in zip(CLASSES[1:], _CLASS_COLOURS[1:]):
        ax1.plot(fr["t_days"], fr[f"n_{c}"], "o", ms=3, color=col, label=c)
    ax1.set_ylabel("outlier pixels")
    ax1.legend(fontsize="x-small")
    ax1.set_title("outliers per frame, by pixel class")
    for ax in (ax0, ax1):
        ax.set_xlabel(_time_label(result.time_unit, result.origin))
    figs["outliers_vs_time"] = fig

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax0, ax1 = fig.subplots(1, 2)
    cmap = ListedColormap(list(_CLASS_COLOURS))
    norm = BoundaryNorm(np.arange(-0.5, len(CLASSES)), cmap.N)
    im = ax0.imshow(result.maps["class_max"].values, origin="lower", cmap=cmap, norm=norm, interpolation="nearest")
    cb = fig.colorbar(im, ax=ax0, ticks=range(len(CLASSES)))
    cb.ax.set_yticklabels(CLASSES)
    ax0.set_title("outlier class (most severe over the groups)")
    pk = result.peak_map
    lim = float(np.nanmax(np.abs(pk))) if np.isfinite(pk).any() else 1.0
    im = ax1.imshow(pk, origin="lower", cmap="coolwarm", vmin=-lim, vmax=lim, interpolation="nearest")
    fig.colorbar(im, ax=ax1, label="peak deviation")
    ax1.set_title("peak deviation of the outliers")
    for ax in (ax0, ax1):
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    figs["class_map"] = fig

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    counts, edges = result.hist
    ax.stairs(counts, edges, color="0.4", label="all tested pixels (sample)")
    px = result.pixels
    if len(px):
        data = [np.clip(px.loc[px["class"] == c, "peak_dev"].to_numpy(F8), edges[0], edges[-1]) for c in CLASSES[1:]]
        ax.hist(data, bins=edges, stacked=True, color=list(_CLASS_COLOURS[1:]), label=list(CLASSES[1:]))
    sig = result.median_threshold
    if math.isfinite(sig):
        for s in (-sig, sig):
            ax.axvline(s, color="k", ls=":", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.5)
    ax.set_xlabel(f"deviation ({result.params.get('compare', '')}, centred)")
    ax.set_ylabel("pixels")
    ax.legend(fontsize="x-small")
    ax.set_title("deviations (outliers: peak deviation per pixel and group)")
    figs["deviation_hist"] = fig
    return figs


def _write(outdir: str | Path, tables: dict[str, pd.DataFrame], figures: dict[str, Figure],
           overwrite: bool) -> dict[str, Path]:  # fmt: skip
    outdir = Path(outdir)
    targets = {**{k: outdir / f"{k}.csv" for k in tables}, **{k: outdir / f"{k}.png" for k in figures}}
    clash = [p for p in targets.values() if p.exists()]
    if clash and not overwrite:
        raise OutputExistsError(clash[0], "outdir", "report files that do not exist yet (or overwrite=True)",
                                f"{len(clash)} exist")  # fmt: skip
    outdir.mkdir(parents=True, exist_ok=True)
    for k, p in targets.items():
        if k in tables:
            atomic_write(p, lambda tmp, t=tables[k]: t.to_csv(tmp, index=False, date_format="%Y-%m-%dT%H:%M:%S.%f"))
        else:
            atomic_write(p, lambda tmp, f=figures[k]: f.savefig(tmp, dpi=100, format="png"))
    return targets


def write_structure_report(result: StructureResult, outdir: str | Path, *, overwrite: bool = False,
                           stats: Sequence[str] = ("mean", "std")) -> dict[str, Path]:  # fmt: skip
    """``frame_stats_<section>.csv``, ``trends.csv``, ``structure_frames.csv``, ``structures.csv`` and
    ``trends_<stat>.png``, ``structures_map.png`` in ``outdir`` (existing files refused unless ``overwrite``)."""
    tables = {f"frame_stats_{k}": v for k, v in result.frame_stats.items()}
    tables["trends"] = result.trends
    figures = {f"trends_{s}": plot_trends(result, s) for s in stats}
    if result.flat_frames is not None:
        tables["structure_frames"] = result.flat_frames
        tables["structures"] = result.structures
        figures["structures_map"] = plot_structures(result)
    return _write(outdir, tables, figures, overwrite)


def write_degradation_report(result: DegradationResult, outdir: str | Path, *, overwrite: bool = False,
                             prefix: str = "degradation") -> dict[str, Path]:  # fmt: skip
    """``<prefix>_frames.csv`` (:data:`DEGRADATION_FRAME_COLUMNS`), ``<prefix>_pixels.csv``
    (:data:`PIXEL_COLUMNS`), ``<prefix>_saturated.csv`` (:data:`SATURATED_COLUMNS`), ``<prefix>_groups.csv``
    (:data:`GROUP_COLUMNS`) and ``<prefix>_outliers_vs_time.png``, ``<prefix>_class_map.png``,
    ``<prefix>_deviation_hist.png`` in ``outdir``; existing files are refused (before anything is written)
    unless ``overwrite``. Returns {name: path}."""
    tables = {f"{prefix}_frames": result.frames, f"{prefix}_pixels": result.pixels,
              f"{prefix}_saturated": result.saturated, f"{prefix}_groups": result.groups}  # fmt: skip
    figures = {f"{prefix}_{k}": f for k, f in plot_degradation(result).items()}
    return _write(outdir, tables, figures, overwrite)


# ---- model evaluation --------------------------------------------------------------------------------------------
def plot_evaluation(ev: xr.Dataset, title: str | None = None):
    """MAE and MAPE maps and the group MAE against temperature per exposure time (a matplotlib Figure)."""
    fig = Figure(figsize=(13, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    units = ev.attrs.get("units", "")
    for ax, name, label in ((axes[0], "mae", f"MAE ({units})"), (axes[1], "mape", "MAPE (%)")):
        img = np.asarray(ev[name].values, F8)
        lo, hi = np.nanpercentile(img, [1, 99]) if np.isfinite(img).any() else (0, 1)
        im = ax.imshow(img, origin="lower", vmin=lo, vmax=hi, cmap="viridis")
        fig.colorbar(im, ax=ax, label=label)
        ax.set_title(label)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    df = summary_table(ev)
    for e, part in df.groupby("exptime"):
        part = part.sort_values("temp")
        axes[2].plot(part["temp"], part["mae"], "o-", label=f"t = {e:g} s")
    axes[2].set_xlabel("temperature (deg C)")
    axes[2].set_ylabel(f"MAE ({units})")
    axes[2].legend(fontsize="small")
    axes[2].set_title("MAE per (temperature, exposure)")
    fig.suptitle(title or f"{ev.attrs.get('model', 'model')} on held-out frames")
    return fig


def write_evaluation_report(ev: xr.Dataset, outdir: str | Path, name: str) -> list[Path]:
    """``<name>_evaluation.csv`` (:func:`detflow.calib.cmos.summary_table`) and ``<name>_evaluation.png``
    (:func:`plot_evaluation`) of a computed evaluation in ``outdir``, replacing earlier ones."""
    outdir = Path(outdir)
    table = outdir / f"{name}_evaluation.csv"
    summary_table(ev).to_csv(table, index=False)
    png = outdir / f"{name}_evaluation.png"
    plot_evaluation(ev, title=f"{name} model on held-out frames").savefig(png, dpi=90)
    return [table, png]


# ---- a run's reports -----------------------------------------------------------------------------------------
def write_run_reports(tree: xr.DataTree, out_dir: str | Path, ingest: dict | None = None,
                      analyses: dict | None = None) -> list[Path]:  # fmt: skip
    """The tables and plots of a finished model store (``tree``, read back from it): evaluation summaries
    (CSV and PNG), the frames the models left out (CSV), the analyses' tables and plots (from their
    results), the ingest report (JSON), in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for m in ("bias", "dark", "flat"):
        if f"{m}_eval" in tree.children:
            written += write_evaluation_report(tree[f"{m}_eval"].to_dataset().load(), out_dir, m)
    rejected = rejected_frames(tree)
    if rejected:
        path = out_dir / "rejected_frames.csv"
        pd.DataFrame(rejected).to_csv(path, index=False)
        written.append(path)
    if analyses:
        if "structure" in analyses:
            written += list(write_structure_report(analyses["structure"], out_dir, overwrite=True).values())
        if "degradation" in analyses:
            written += list(write_degradation_report(analyses["degradation"], out_dir, overwrite=True).values())
    if ingest:
        path = out_dir / "ingest_report.json"
        path.write_text(json.dumps(ingest, indent=1, default=str))
        written.append(path)
    return written


def rejected_frames(tree: xr.DataTree) -> list[dict]:
    """Frames the dark and flat models left out (``<model>_model/rejected``), with why."""
    out = []
    for m in ("dark", "flat"):
        group = f"{m}_model"
        if group not in tree.children or "rejected" not in tree[group].data_vars:
            continue
        node = tree[group]
        flags = node["rejected"].values
        paths = node["path"].values if "path" in node.coords else np.arange(flags.size)
        for p, f in zip(paths, flags):
            if int(f):
                out.append({"model": m, "path": str(p),
                            "reasons": " ".join(k for k, bit in REJECT.items() if int(f) & bit)})  # fmt: skip
    return out
