"""Tables and figures for reports: per-organ DSC/NSD side by side, efficiency, training curves, overlays."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from cps3d.evaluation.meters import NO_GPU
from cps3d.evaluation.tables import format_number


def organ_table(summaries: Mapping[str, Mapping], digits: int = 4) -> str:
    """A Markdown table with one row per organ and DSC then NSD columns for each run, like the paper's Tables 3-5.

    ``summaries``: {run name: summary dict of :func:`cps3d.evaluation.summary.summarize`}; organs are those of the
    first run, in its order; the last row is the mean over organs.
    """
    if not summaries:
        raise ValueError("no summaries to tabulate")
    names = list(summaries)
    organs = list(next(iter(summaries.values()))["per_target"])
    head = ["Organ"] + [f"{n} DSC" for n in names] + [f"{n} NSD" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for organ in organs:
        row = [organ]
        for metric in ("DSC_mean", "NSD_mean"):
            row += [format_number(summaries[n]["per_target"].get(organ, {}).get(metric), digits) for n in names]
        lines.append("| " + " | ".join(row) + " |")
    row = ["**mean**"]
    for metric in ("DSC_mean", "NSD_mean"):
        row += [f"**{format_number(summaries[n]['mean'][metric], digits)}**" for n in names]
    lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def efficiency_table(profiles: Mapping[str, Mapping]) -> str:
    """A Markdown table of FLARE's running measures per run, from ``profile.json`` dicts of the profiler."""
    head = ["Run", "cases", "total time (s)", "median time per case (s)", "peak RSS (MB)", "CPU area (%*s)",
            "peak GPU memory (MB)", "GPU area (MB*s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, p in profiles.items():
        t = p["total"]
        per_case = [c["running_time_s"] for c in p.get("cases", [])]
        no_gpu = p.get("gpu") == NO_GPU
        lines.append("| " + " | ".join([
            name, str(len(per_case)), format_number(t["running_time_s"], 1),
            format_number(float(np.median(per_case)), 2) if per_case else "-",
            format_number(t.get("peak_process_rss_mb"), 0), format_number(t.get("cpu_area_percent_s"), 0),
            NO_GPU if no_gpu else format_number(t.get("peak_gpu_mb"), 0), NO_GPU if no_gpu else format_number(t.get("gpu_area_mb_s"), 0),
        ]) + " |")
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display): the one place that chooses the backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 90) -> None:
    """Write a matplotlib figure to ``path`` atomically (the format follows the suffix)."""
    from cps3d.files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)


def plot_training_curves(logs: Mapping[str, Mapping[str, list]], path: str | os.PathLike) -> None:
    """Training loss (supervised part) and validation pseudo-Dice per epoch for each run, in one figure.

    ``logs``: {run name: the trainer's logged curves (checkpoint ``"logging"``)}.
    """
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, log in logs.items():
        x = np.arange(1, len(log["train_losses"]) + 1)
        sup = log.get("train_sup_losses") or log["train_losses"]
        a.plot(x, sup[: len(x)], label=f"{name}: supervised loss")
        if log.get("train_cps_losses"):
            a.plot(x, log["train_cps_losses"][: len(x)], ":", label=f"{name}: CPS loss (unweighted)")
        b.plot(x, log["mean_fg_dice"][: len(x)], label=f"{name}: network 1")
        if log.get("mean_fg_dice_avg"):
            b.plot(x, log["mean_fg_dice_avg"][: len(x)], "--", label=f"{name}: average of both networks")
    a.set_xlabel("epoch")
    a.set_ylabel("training loss")
    a.legend(fontsize=8)
    b.set_xlabel("epoch")
    b.set_ylabel("validation pseudo-Dice")
    b.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _axial_slices(reference: np.ndarray, n: int) -> list[int]:
    """Slices (axis 0) showing the most organs, spread out: the middle of the labeled range and around it."""
    counts = np.array([len(np.unique(s)) - 1 for s in reference])
    labeled = np.flatnonzero(counts > 0)
    if labeled.size == 0:
        return [reference.shape[0] // 2] * n
    picks = np.linspace(labeled[0], labeled[-1], n + 2)[1:-1].round().astype(int)
    return [int(p) for p in picks]


def qualitative_figure(cases: Sequence[str], image_files: Mapping[str, str], reference_files: Mapping[str, str],
                       predictions: Mapping[str, Mapping[str, str]], path: str | os.PathLike,
                       case_dice: Mapping[str, Mapping[str, float]] | None = None, n_labels: int = 13,
                       window: tuple[float, float] = (-160.0, 240.0)) -> None:
    """Axial slices of some test cases: image, reference and each run's prediction as coloured overlays (like the
    paper's Fig. 5). The same slices are shown for every run. Files are read with SimpleITK; the axial axis is the
    array's first axis (z, y, x order), flipped so that anterior is up.

    ``predictions``: {run name: {case: file}}; ``case_dice``: {run name: {case: mean DSC}} shown in the titles.
    """
    import SimpleITK as sitk
    from matplotlib.colors import ListedColormap

    plt = pyplot()
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, 20))[: n_labels]
    cmap = ListedColormap(np.vstack([[0, 0, 0, 0], colours]))
    runs = list(predictions)
    cols = 2 + len(runs)
    rows = [(c, k) for c in cases for k in _axial_slices(sitk.GetArrayFromImage(sitk.ReadImage(reference_files[c])), 1)]
    fig, axes = plt.subplots(len(rows), cols, figsize=(3 * cols, 3 * len(rows)), squeeze=False)
    for r, (case, k) in enumerate(rows):
        image = sitk.GetArrayFromImage(sitk.ReadImage(image_files[case]))[k]
        panels = [("image", None), ("reference", reference_files[case])] + [(n, predictions[n][case]) for n in runs]
        for c, (title, label_file) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1])
            if label_file is not None:
                lab = sitk.GetArrayFromImage(sitk.ReadImage(label_file))[k]
                ax.imshow(np.ma.masked_equal(lab, 0), cmap=cmap, vmin=0, vmax=n_labels, alpha=0.55,
                          interpolation="nearest")
            if case_dice and title in case_dice and case in case_dice[title]:
                title = f"{title} (mean DSC {case_dice[title][case]:.3f})"
            ax.set_title(f"{case}, slice {k}\n{title}" if c == 0 else title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)

