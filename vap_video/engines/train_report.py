"""The run folder's report, refreshed after every epoch: ``results.csv`` and the plots.

Why every epoch: a long run is watched while it runs (and may be killed); the curves of the epochs
done so far must be on disk, not only written at the end.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

__all__ = ["append_results", "write_plots"]


def append_results(path: Path, row: dict[str, Any]) -> None:
    """Append one epoch's row to results.csv (header on the first row; floats to 5 significant digits)."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow({k: (f"{v:.5g}" if isinstance(v, float) else v) for k, v in row.items()})


def write_plots(run: Path, curves: dict[str, tuple]) -> None:
    """results.png (losses and mAP per epoch) and pr_curve.png (the latest validation's PR curve).

    Each file is written under a temporary name and renamed, so an image viewer that reloads it
    while training runs never reads half a file.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if not _WARNED:
            print("matplotlib not installed: skipping plots (pip install matplotlib)")
            _WARNED.append(True)
        return
    rows = list(csv.DictReader(open(run / "results.csv"))) if (run / "results.csv").exists() else []
    if rows:
        _plot_results(plt, rows, run / "results.png")
    if curves:
        _plot_pr(plt, curves, run / "pr_curve.png")


_WARNED: list[bool] = []


def _save(fig: Any, plt: Any, path: Path) -> None:
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _plot_results(plt: Any, rows: list[dict[str, str]], path: Path) -> None:
    ep = [int(r["epoch"]) for r in rows]
    keys = [k for k in rows[0] if k.endswith(("_box", "_cls", "_reg")) or k.startswith("map")]
    fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 3), squeeze=False)
    for ax, k in zip(axes[0], keys):
        ax.plot(ep, [float(r[k]) for r in rows], marker=".")
        ax.set_title(k)
        ax.set_xlabel("epoch")
    _save(fig, plt, path)


def _plot_pr(plt: Any, curves: dict[str, tuple], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 4))
    for h, (s, p, r) in curves.items():
        if len(s):
            ax.plot(r, p, label=h)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("PR curve (IoU 0.5, all classes)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend()
    _save(fig, plt, path)
