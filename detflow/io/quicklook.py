"""PNG quicklooks of a written store (an exporter: it reads products, it never recomputes them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..schema import DQ
from .store import open_store


def wfi_quicklook(store: str | Path, png: str | Path, truth_slope: np.ndarray | None = None,
                  frame: int = 0) -> Path:  # fmt: skip
    """Slope image, DQ summary and (with a truth) normalised residuals of the ``l2`` group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    l2 = open_store(store)["l2"].to_dataset().isel(frame=frame)
    slope = l2["data"].values
    dq = l2["dq"].values
    good = (dq & np.uint32(DQ.DO_NOT_USE | DQ.SATURATED | DQ.JUMP_DET)) == 0
    ncol = 3 if truth_slope is not None else 2
    fig, axes = plt.subplots(1, ncol, figsize=(5.2 * ncol, 5), constrained_layout=True)
    finite = slope[np.isfinite(slope)]
    lo, hi = np.percentile(finite, [1, 99.5]) if finite.size else (0, 1)
    im = axes[0].imshow(slope, origin="lower", vmin=lo, vmax=hi, cmap="magma")
    axes[0].set_title("L2 slope (DN/s)")
    fig.colorbar(im, ax=axes[0], shrink=0.8)
    cats = {"saturated": DQ.SATURATED, "jump": DQ.JUMP_DET, "do not use": DQ.DO_NOT_USE,
            "no lin corr": DQ.NO_LIN_CORR}  # fmt: skip
    code = np.zeros(dq.shape, dtype=np.int8)
    for i, flag in enumerate(cats.values(), start=1):
        code[(dq & np.uint32(flag)) != 0] = i
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(["white", "tab:red", "tab:orange", "black", "tab:purple"][: len(cats) + 1])
    axes[1].imshow(code, origin="lower", cmap=cmap, vmin=-0.5, vmax=len(cats) + 0.5, interpolation="nearest")
    axes[1].set_title("DQ: " + ", ".join(f"{i}={n} ({int(np.count_nonzero(code == i))})"
                                         for i, n in enumerate(cats, start=1)), fontsize=8)  # fmt: skip
    if truth_slope is not None:
        err = np.sqrt(l2["var_rnoise"].values + l2["var_poisson"].values)
        chi = np.where(good, (slope - truth_slope) / err, np.nan)
        axes[2].hist(chi[np.isfinite(chi)].ravel(), bins=121, range=(-6, 6), density=True, alpha=0.7)
        x = np.linspace(-6, 6, 200)
        axes[2].plot(x, np.exp(-x**2 / 2) / np.sqrt(2 * np.pi), "k-", label="N(0, 1)")
        axes[2].set_yscale("log")
        axes[2].set_ylim(1e-5, 1)
        axes[2].set_title(f"(slope - truth) / err, good pixels: std {np.nanstd(chi):.3f}")
        axes[2].legend()
    png = Path(png)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png
