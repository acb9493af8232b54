"""The paper's evaluation figures as PNG: one-vs-all ROC curves of the grade classifier (Fig. 3)
and predicted-vs-measured RNA proliferation score (Fig. 4).

Figures are built on a bare :class:`matplotlib.figure.Figure` (Agg canvas), never through pyplot,
so no global backend or figure registry is touched and nothing needs a display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from tupac.predict.metrics import one_vs_rest_auroc, regression_metrics

__all__ = ["plot_roc", "plot_rna_scatter"]


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120)
    return path


def plot_roc(y_true: np.ndarray, proba: np.ndarray, path: str | Path, *, classes=(1, 2, 3), title: str = "") -> Path:
    """One-vs-all ROC curve per grade plus the micro average, AUCs in the legend.

    Parameters
    ----------
    y_true : array of int, shape (n,)
    proba : array of float, shape (n, K)
        Out-of-fold class probabilities, column ``j`` for ``classes[j]``.
    path : path-like
        PNG to write.
    """
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, np.float64)
    aucs = one_vs_rest_auroc(y_true, proba, classes)
    fig = Figure(figsize=(5.2, 5.0))
    ax = fig.add_subplot()
    onehot = (y_true[:, None] == np.asarray(classes)[None, :]).astype(int)
    for j, c in enumerate(classes):
        if 0 < onehot[:, j].sum() < len(y_true):
            fpr, tpr, _ = roc_curve(onehot[:, j], proba[:, j])
            ax.plot(fpr, tpr, lw=1.8, label=f"grade {c} vs rest (AUC {aucs[f'auroc_class_{c}']:.3f})")
    fpr, tpr, _ = roc_curve(onehot.ravel(), proba.ravel())
    ax.plot(fpr, tpr, "k--", lw=1.5, label=f"micro average (AUC {aucs['auroc_micro']:.3f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate", ylabel="True positive rate",
           title=title or "Tumor proliferation grade: one-vs-all ROC")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_rna_scatter(y_true: np.ndarray, y_pred: np.ndarray, path: str | Path, *, title: str = "") -> Path:
    """Predicted vs measured RNA proliferation score with Pearson r and Spearman rho.

    Parameters
    ----------
    y_true, y_pred : array of float, shape (n,)
        Measured and out-of-fold predicted scores.
    path : path-like
        PNG to write.
    """
    y_true = np.asarray(y_true, np.float64)
    y_pred = np.asarray(y_pred, np.float64)
    m = regression_metrics(y_true, y_pred)
    fig = Figure(figsize=(5.2, 5.0))
    ax = fig.add_subplot()
    ax.scatter(y_true, y_pred, s=14, alpha=0.75, edgecolors="none")
    lo = float(min(y_true.min(), y_pred.min()))
    hi = float(max(y_true.max(), y_pred.max()))
    ax.plot([lo, hi], [lo, hi], color="0.6", lw=0.8, label="identity")
    if np.ptp(y_true) > 0:
        slope, icpt = np.polyfit(y_true, y_pred, 1)
        ax.plot([lo, hi], [icpt + slope * lo, icpt + slope * hi], "r-", lw=1.2, label="least squares")
    ax.text(0.03, 0.97,
            f"Pearson r = {m['pearson_r']:.3f} (p = {m['pearson_p']:.2g})\n"
            f"Spearman \u03c1 = {m['spearman_rho']:.3f} (p = {m['spearman_p']:.2g})\nn = {len(y_true)}",
            transform=ax.transAxes, va="top", fontsize=9)
    ax.set(xlabel="Measured RNA proliferation score", ylabel="Predicted RNA proliferation score",
           title=title or "RNA proliferation score: predicted vs measured")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
