"""The comparison's reports: ``compare.json`` (everything), ``compare.csv`` (one row per labeled count, organ, metric
and method), ``compare.md`` (the tables) and ``compare.png`` (the gain per organ with its interval, and the gain
against the labeled count when several were trained)."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cps3d.compare.stats import mean_sd, paired_summary, score_table
from cps3d.files import atomic_path, write_json

METRICS = ("DSC", "NSD")
MEAN = "mean"  # the row of the mean over organs (per case, then as every organ)


def _case_scores(result: dict[str, Any], split: str, organ: str, metric: str) -> dict[str, float]:
    cases = result["scores"][split]["cases"]
    if organ == MEAN:
        return {c: float(np.mean([v[metric] for v in organs.values()])) for c, organs in cases.items()}
    return {c: float(organs[organ][metric]) for c, organs in cases.items()}


def summarize(results: Sequence[dict[str, Any]], config, split, counts: Sequence[int],
              subsets: dict[tuple[int, int], list[str]], started_seconds: float | None = None) -> dict[str, Any]:
    """Everything the reports show, from the runs' results: per labeled count, each method's scores per seed (mean
    over the evaluated cases) with their mean and spread, and each CPS method's paired difference from the
    baseline per organ and for the mean over organs (:func:`cps3d.compare.stats.paired_summary`)."""
    evaluated = config.evaluate[0]
    baseline = config.baseline
    by_labeled = {}
    for k in counts:
        runs = {m: {r["seed"]: r for r in results if r["labeled"] == k and r["method"] == m} for m in config.methods}
        seeds = [s for s in config.seeds if all(s in rs for rs in runs.values())]  # all, unless some are not done
        if not seeds:
            continue
        first = runs[baseline][seeds[0]]["scores"][evaluated]
        organs = list(first["per_organ"])
        cases = sorted(first["cases"])
        tables = {m: {metric: {o: score_table({s: _case_scores(r, evaluated, o, metric) for s, r in rs.items()},
                                              seeds, cases) for o in [*organs, MEAN]} for metric in METRICS}
                  for m, rs in runs.items()}
        methods = {}
        for m, rs in runs.items():
            metrics: dict[str, dict[str, Any]] = {}
            for metric in METRICS:
                metrics[metric] = {}
                for o in [*organs, MEAN]:
                    per_seed = [float(v) for v in tables[m][metric][o].mean(axis=1)]
                    mean, sd = mean_sd(per_seed)
                    metrics[metric][o] = {"per_seed": per_seed, "mean": mean, "sd": sd}
            methods[m] = {"epochs": [rs[s]["epochs"] for s in seeds],
                          "train_seconds": [rs[s]["train_seconds"] for s in seeds],
                          "train_seconds_median": statistics.median(rs[s]["train_seconds"] for s in seeds),
                          "metrics": metrics}
        gains = {m: {metric: {o: paired_summary(tables[m][metric][o], tables[baseline][metric][o], config.bootstrap,
                                                config.level, config.bootstrap_seed) for o in [*organs, MEAN]}
                     for metric in METRICS} for m in runs if m != baseline}
        by_labeled[str(k)] = {"organs": organs, "flare_rules": all(first["flare"].values()), "cases": cases,
                              "seeds": seeds, "methods": methods, "gains": gains}
    if not by_labeled:
        raise ValueError("no labeled count has a finished run of every method for any seed: nothing to report")
    return {"config": config.to_dict(), "split": split.to_dict(), "labeled": list(counts),
            "baseline": baseline, "evaluated": evaluated,
            "subsets": {f"{k}/{s}": v for (k, s), v in subsets.items()},
            "runs": [{k: v for k, v in r.items() if k != "curves"} for r in results],
            "by_labeled": by_labeled, "seconds": started_seconds}


# ---------------------------------------------------------------------------------------------------- Markdown
def _ms(mean: float, sd: float | None) -> str:
    return f"{mean:.3f}" if sd is None else f"{mean:.3f} ± {sd:.3f}"


def _gain(g: dict[str, Any]) -> str:
    return f"{g['mean']:+.3f} [{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown pipe table: the first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(3, *(len(r[i]) for r in cells)) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |"

    rule = "|" + "|".join((":" + "-" * (w + 1)) if i == 0 else ("-" * (w + 1) + ":") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def markdown(summary: dict[str, Any]) -> str:
    """The tables of ``compare.md``: for each labeled count, every method's mean DSC and NSD over organs (mean ± sd
    over seeds, each seed's value), each CPS method's paired difference from the baseline with its interval, and
    the per-organ DSC with the per-organ differences."""
    base, split = summary["baseline"], summary["evaluated"]
    level = round(100 * summary["config"]["level"])
    out = []
    for k, block in summary["by_labeled"].items():
        methods, gains = block["methods"], block["gains"]
        seeds = ", ".join(map(str, block["seeds"]))
        rows = []
        for metric in METRICS:
            for m, info in methods.items():
                v = info["metrics"][metric][MEAN]
                rows.append([f"{m} mean {metric}", _ms(v["mean"], v["sd"]), " / ".join(f"{x:.3f}" for x in v["per_seed"]),
                             " / ".join(map(str, info["epochs"])), f"{info['train_seconds_median']:.0f}"])
        for metric in METRICS:
            for m, g in gains.items():
                v = g[metric][MEAN]
                rows.append([f"{m} - {base}, mean {metric}", _gain(v), " / ".join(f"{x:+.3f}" for x in v["per_seed"]),
                             f"{v['wins']}/{v['pairs']} pairs", ""])
        rules = "FLARE 2022 rules" if block["flare_rules"] else "DSC and NSD per label (dataset.json tolerances)"
        out.append(f"### {k} labeled cases ({len(block['cases'])} {split} cases, {rules}; seeds {seeds})\n")
        out.append(markdown_table(["", f"mean ± sd over seeds; differences: paired mean [{level} % CI]", "per seed",
                                   "epochs; differences: pairs > 0", "train s (median)"], rows))
        organ_rows = []
        for o in [*block["organs"], MEAN]:
            row = [o if o != MEAN else "**mean**"]
            row += [_ms(info["metrics"]["DSC"][o]["mean"], info["metrics"]["DSC"][o]["sd"]) for info in methods.values()]
            row += [_gain(g["DSC"][o]) for g in gains.values()]
            organ_rows.append(row)
        out.append(f"\nPer-organ DSC (mean ± sd over seeds) and the paired difference from `{base}` "
                   f"(mean over seeds and cases, {level} % bootstrap interval over cases):\n")
        out.append(markdown_table(["organ", *methods, *(f"{m} - {base}" for m in gains)], organ_rows))
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------- CSV, figure
CSV_FIELDS = ("labeled", "organ", "metric", "method", "seeds", "mean", "sd", "per_seed", "difference", "ci_low",
              "ci_high", "pairs")


def csv_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per labeled count, organ (and ``mean``), metric and method; the difference columns are empty for the
    baseline."""
    rows = []
    for k, block in summary["by_labeled"].items():
        for o in [*block["organs"], MEAN]:
            for metric in METRICS:
                for m, info in block["methods"].items():
                    v = info["metrics"][metric][o]
                    g = block["gains"].get(m, {}).get(metric, {}).get(o)
                    rows.append({"labeled": int(k), "organ": o, "metric": metric, "method": m,
                                 "seeds": len(v["per_seed"]), "mean": round(v["mean"], 6),
                                 "sd": "" if v["sd"] is None else round(v["sd"], 6),
                                 "per_seed": " ".join(f"{x:.6f}" for x in v["per_seed"]),
                                 "difference": "" if g is None else round(g["mean"], 6),
                                 "ci_low": "" if g is None else round(g["ci"][0], 6),
                                 "ci_high": "" if g is None else round(g["ci"][1], 6),
                                 "pairs": "" if g is None else g["pairs"]})
    return rows


def plot(summary: dict[str, Any], path: str | Path) -> None:
    """The DSC gain of each CPS method over the baseline per organ (at the smallest labeled count) with its
    interval; with several labeled counts a second panel: the gain of the mean DSC against the labeled count."""
    from cps3d.report import pyplot, save_figure

    plt = pyplot()
    counts = sorted(summary["by_labeled"], key=int)
    several = len(counts) > 1
    fig, axes = plt.subplots(1, 2 if several else 1, figsize=(12 if several else 7, 5), squeeze=False)
    block = summary["by_labeled"][counts[0]]
    organs = [*block["organs"], MEAN]
    methods = list(block["gains"])
    ax = axes[0][0]
    height = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        g = [block["gains"][m]["DSC"][o] for o in organs]
        y = np.arange(len(organs)) + (i - (len(methods) - 1) / 2) * height
        mean = np.array([x["mean"] for x in g])
        err = np.array([[x["mean"] - x["ci"][0] for x in g], [x["ci"][1] - x["mean"] for x in g]])
        ax.barh(y, mean, height=height, xerr=err, capsize=2, label=m)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(np.arange(len(organs)), organs)
    ax.invert_yaxis()
    ax.set_xlabel(f"DSC difference from {summary['baseline']} ({round(100 * summary['config']['level'])} % CI)")
    ax.set_title(f"{counts[0]} labeled cases")
    ax.legend(fontsize=8)
    if several:
        ax2 = axes[0][1]
        x = [int(k) for k in counts]
        for m in methods:
            g = [summary["by_labeled"][k]["gains"][m]["DSC"][MEAN] for k in counts]
            ax2.errorbar(x, [v["mean"] for v in g],
                         yerr=[[v["mean"] - v["ci"][0] for v in g], [v["ci"][1] - v["mean"] for v in g]],
                         marker="o", capsize=3, label=m)
        ax2.axhline(0, color="black", lw=0.8)
        ax2.set_xticks(x)
        ax2.set_xlabel("labeled training cases")
        ax2.set_ylabel("mean DSC difference")
        ax2.set_title("gain against the labeled count")
        ax2.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write_outputs(output: str | Path, summary: dict[str, Any], header: str = "") -> tuple[str, dict[str, Path]]:
    """Write ``compare.json``, ``compare.csv``, ``compare.md`` (``header`` above the tables) and ``compare.png``;
    returns the Markdown and {kind: path}."""
    output = Path(output)
    files = {"json": output / "compare.json", "csv": output / "compare.csv", "md": output / "compare.md",
             "png": output / "compare.png"}
    text = (header.rstrip() + "\n\n" if header else "") + markdown(summary)
    summary = {**summary, "markdown": text}
    write_json(files["json"], summary, indent=1)
    with atomic_path(files["csv"]) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(csv_rows(summary))
    with atomic_path(files["md"]) as tmp:
        Path(tmp).write_text(text + "\n" + f"![gain per organ]({files['png'].name})\n")
    plot(summary, files["png"])
    return text, files
