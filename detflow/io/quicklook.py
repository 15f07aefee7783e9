"""PNG quicklooks of a written store (an exporter: it reads products, it never recomputes them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..schema import DQ
from .store import open_store

# the DQ panel's key: a pixel takes the colour of the first of these flags it has (then "other flags")
DQ_KEY = (("do not use", DQ.DO_NOT_USE, "black"), ("saturated", DQ.SATURATED, "tab:red"),
          ("jump", DQ.JUMP_DET, "tab:orange"), ("no lin corr", DQ.NO_LIN_CORR, "tab:purple"))  # fmt: skip
OTHER_COLOUR, CLEAN_COLOUR = "tab:gray", "white"


def dq_categories(dq: np.ndarray) -> np.ndarray:
    """Per pixel the index of its row of the DQ panel's key: 0 no flag, 1.. the first flag of
    :data:`DQ_KEY` it has, ``len(DQ_KEY) + 1`` any other flag."""
    code = np.where(dq != 0, np.int8(len(DQ_KEY) + 1), np.int8(0))
    for i, (_, flag, _) in reversed(list(enumerate(DQ_KEY, start=1))):
        code[(dq & np.uint32(flag)) != 0] = i
    return code


def wfi_quicklook_figure(store: str | Path, truth_slope: np.ndarray | None = None, frame: int = 0):
    """The quicklook figure (matplotlib): slope image, DQ map with its colour key and (with a truth)
    the normalised residuals of the ``l2`` group; axes in detector pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    l2 = open_store(store)["l2"].to_dataset().isel(frame=frame)
    slope = l2["data"].values
    dq = l2["dq"].values
    y, x = l2["y"].values, l2["x"].values
    extent = (x[0] - 0.5, x[-1] + 0.5, y[0] - 0.5, y[-1] + 0.5)  # pixel centres at their detector index
    units = l2["data"].attrs.get("units", "DN / s")
    ncol = 3 if truth_slope is not None else 2
    fig, axes = plt.subplots(1, ncol, figsize=(5.6 * ncol, 6.0), constrained_layout=True)
    finite = slope[np.isfinite(slope)]
    lo, hi = np.percentile(finite, [1, 99.5]) if finite.size else (0, 1)
    im = axes[0].imshow(slope, origin="lower", vmin=lo, vmax=hi, cmap="magma", extent=extent)
    axes[0].set_title("L2 slope")
    fig.colorbar(im, ax=axes[0], shrink=0.8).set_label(f"slope ({units})")

    code = dq_categories(dq)
    colours = [CLEAN_COLOUR] + [c for _, _, c in DQ_KEY] + [OTHER_COLOUR]
    keyed = np.uint32(sum(int(f) for _, f, _ in DQ_KEY))
    other_bits = int(np.bitwise_or.reduce((dq & ~keyed).ravel())) if dq.size else 0
    other = [b.name.lower() for b in DQ if b.value and other_bits & b.value]
    other_name = "other" + (f": {', '.join(other[:3])}{', ...' if len(other) > 3 else ''}" if other else " flags")
    names = ["no flag"] + [n for n, _, _ in DQ_KEY] + [other_name]
    axes[1].imshow(code, origin="lower", cmap=ListedColormap(colours), vmin=-0.5, vmax=len(colours) - 0.5,
                   interpolation="nearest", extent=extent)  # fmt: skip
    axes[1].set_title("DQ (a pixel shows the first of its flags in the key)", fontsize=9)
    counts = [int(np.count_nonzero(code == i)) for i in range(len(colours))]
    handles = [Patch(facecolor=c, edgecolor="0.3", label=f"{n}: {k} px") for c, n, k in zip(colours, names, counts)]
    axes[1].legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8,
                   title="DQ key (colour: flag, pixel count)", title_fontsize=8)  # fmt: skip
    for ax in axes[:2]:
        ax.set_xlabel("x (detector pixel)")
        ax.set_ylabel("y (detector pixel)")
    if truth_slope is not None:
        good = (dq & np.uint32(DQ.DO_NOT_USE | DQ.SATURATED | DQ.JUMP_DET)) == 0
        err = np.sqrt(l2["var_rnoise"].values + l2["var_poisson"].values)
        chi = np.where(good, (slope - truth_slope) / err, np.nan)
        axes[2].hist(chi[np.isfinite(chi)].ravel(), bins=121, range=(-6, 6), density=True, alpha=0.7,
                     label="good pixels")  # fmt: skip
        t = np.linspace(-6, 6, 200)
        axes[2].plot(t, np.exp(-(t**2) / 2) / np.sqrt(2 * np.pi), "k-", label="N(0, 1)")
        axes[2].set_yscale("log")
        axes[2].set_ylim(1e-5, 1)
        axes[2].set_title(f"normalised residuals: std {np.nanstd(chi):.3f}")
        axes[2].set_xlabel("(slope - truth) / err")
        axes[2].set_ylabel("probability density")
        axes[2].legend()
    return fig


def wfi_quicklook(store: str | Path, png: str | Path, truth_slope: np.ndarray | None = None,
                  frame: int = 0) -> Path:  # fmt: skip
    """Write :func:`wfi_quicklook_figure` as a PNG."""
    import matplotlib.pyplot as plt

    fig = wfi_quicklook_figure(store, truth_slope, frame)
    png = Path(png)
    fig.savefig(png, dpi=90, bbox_inches="tight")  # the DQ key sits below its panel
    plt.close(fig)
    return png
