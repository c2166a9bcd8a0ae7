"""The training progress plot (``progress.png``): losses, pseudo-Dice of both networks, what the unlabeled pseudo-labels
say, lambda and learning rate."""

from __future__ import annotations

import os

import numpy as np


def plot_progress(logged: dict[str, list], path: str | os.PathLike) -> None:
    """Plot the per-epoch curves that the trainer logged and write ``path`` atomically.

    ``logged`` maps keys to one value per epoch (nnU-Net's logger checkpoint plus cps3d's keys); keys that are absent
    (for instance the second network's in a supervised run) are skipped.
    """
    from cps3d.report import pyplot, save_figure

    plt = pyplot()

    n = min(len(v) for k, v in logged.items() if k in ("train_losses", "val_losses", "mean_fg_dice", "lrs"))
    if n == 0:
        return
    x = np.arange(1, n + 1)

    def series(key):
        v = logged.get(key)
        return None if not v or len(v) < n else np.asarray(v[:n], dtype=float)

    fig, axes = plt.subplots(4, 1, figsize=(10, 14), sharex=True)
    ax = axes[0]
    for key, label, style in (("train_losses", "train total", "-"), ("train_sup_losses", "train supervised", "--"),
                              ("train_cps_losses", "train CPS (unweighted)", ":"), ("val_losses", "validation", "-")):
        s = series(key)
        if s is not None:
            ax.plot(x, s, style, label=label)
    ax.set_ylabel("loss")
    ax.legend(loc="best")
    ax.set_title("Training progress")
    ax = axes[1]
    for key, label in (("mean_fg_dice", "network 1"), ("mean_fg_dice_net2", "network 2"),
                       ("mean_fg_dice_avg", "average of both"), ("ema_fg_dice", "network 1 (moving average)")):
        s = series(key)
        if s is not None:
            ax.plot(x, s, label=label)
    for key, label in (("pseudo_fg_fraction", "unlabeled pseudo-labels: foreground share"),
                       ("pseudo_confident_fraction", "unlabeled pseudo-labels: confident share")):
        s = series(key)
        if s is not None and np.isfinite(s).any():
            ax.plot(x, s, ":", label=label)
    ax.set_ylabel("pseudo Dice (validation), fractions")
    ax.legend(loc="best")
    ax = axes[2]
    s = series("lambda")
    if s is not None:
        ax.plot(x, s, color="tab:purple", label="CPS weight lambda")
        ax.set_ylabel("lambda")
    ax2 = ax.twinx()
    for key, label, style in (("lrs", "learning rate network 1", "-"), ("lrs_2", "learning rate network 2", "--")):
        s = series(key)
        if s is not None:
            ax2.plot(x, s, style, color="tab:green", label=label)
    ax2.set_ylabel("learning rate")
    ax.legend(loc="upper left")
    ax2.legend(loc="upper right")
    ax = axes[3]
    start, end = series("epoch_start_timestamps"), series("epoch_end_timestamps")
    if start is not None and end is not None:
        ax.plot(x, end - start, label="epoch duration")
        ax.set_ylim(bottom=0)
        ax.legend(loc="best")
    ax.set_ylabel("seconds")
    ax.set_xlabel("epoch")
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
    plt.close(fig)
