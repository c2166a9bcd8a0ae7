"""Evaluation results and summaries: per-case rows, means and standard deviations per target, the CSV and JSON
files ``cps3d evaluate`` writes and reads back."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypedDict, cast

import numpy as np

from cps3d.evaluation.scoring import CaseResult
from cps3d.evaluation.targets import Target
from cps3d.files import read_json, write_csv, write_json

if TYPE_CHECKING:  # typing.NotRequired is Python 3.11's; the annotations are not evaluated at run time
    from typing import NotRequired

__all__ = ["EvaluationResult", "EvaluationSummary", "TargetSummary", "MeanSummary", "summarize", "write_per_case_csv",
           "write_summary_json", "load_summary"]


class MeanSummary(TypedDict):
    """Means and standard deviations (over cases, ddof=0) of DSC and NSD."""

    DSC_mean: float
    DSC_std: float
    NSD_mean: float
    NSD_std: float


class TargetSummary(MeanSummary):
    """One target's scores (:class:`MeanSummary`) and how it was scored."""

    labels: list[int]
    tolerance_mm: float
    flare: bool
    slice_range: bool


class EvaluationSummary(TypedDict):
    """What :func:`summarize` returns and ``summary.json`` holds (that file adds ``targets``); a folder evaluation
    (:func:`cps3d.evaluation.evaluate_folders`) adds the two folders and its settings."""

    num_cases: int
    per_target: dict[str, TargetSummary]
    mean: MeanSummary
    pred_dir: NotRequired[str]
    ref_dir: NotRequired[str]
    config: NotRequired[dict[str, Any]]


@dataclass(frozen=True)
class EvaluationResult:
    """Per-case rows, the targets (in table order) and the summary of a folder evaluation."""

    cases: tuple[CaseResult, ...]
    targets: tuple[Target, ...]
    summary: EvaluationSummary

    def rows(self) -> list[dict[str, Any]]:
        """One dict per case: ``case``, ``<target>_DSC``, ``<target>_NSD`` for each target, ``mean_DSC``, ``mean_NSD``."""
        out = []
        for c in self.cases:
            row: dict[str, Any] = {"case": c.case}
            for t in self.targets:
                dsc, nsd = c.scores[t.name]
                row[f"{t.name}_DSC"] = dsc
                row[f"{t.name}_NSD"] = nsd
            row["mean_DSC"] = float(np.mean([c.scores[t.name][0] for t in self.targets]))
            row["mean_NSD"] = float(np.mean([c.scores[t.name][1] for t in self.targets]))
            out.append(row)
        return out


def summarize(cases: Sequence[CaseResult], targets: Sequence[Target]) -> EvaluationSummary:
    """Mean and standard deviation (over cases, ddof=0) of DSC and NSD per target, and the mean over targets.

    Returns an :class:`EvaluationSummary`; the overall means are means of the per-target means (the paper's mDSC),
    the overall stds those of the per-case target means.
    """
    if not cases:
        raise ValueError("no cases to summarize")
    per_target: dict[str, TargetSummary] = {}
    for t in targets:
        d = np.array([c.scores[t.name][0] for c in cases], np.float64)
        n = np.array([c.scores[t.name][1] for c in cases], np.float64)
        per_target[t.name] = {"labels": list(t.values), "tolerance_mm": t.tolerance_mm, "flare": t.flare,
                              "slice_range": t.slice_range, "DSC_mean": float(d.mean()), "DSC_std": float(d.std()),
                              "NSD_mean": float(n.mean()), "NSD_std": float(n.std())}
    case_d = np.array([np.mean([c.scores[t.name][0] for t in targets]) for c in cases])
    case_n = np.array([np.mean([c.scores[t.name][1] for t in targets]) for c in cases])
    mean: MeanSummary = {"DSC_mean": float(np.mean([v["DSC_mean"] for v in per_target.values()])),
            "DSC_std": float(case_d.std()),
            "NSD_mean": float(np.mean([v["NSD_mean"] for v in per_target.values()])),
            "NSD_std": float(case_n.std())}
    return {"num_cases": len(cases), "per_target": per_target, "mean": mean}


def write_per_case_csv(path: str | os.PathLike, result: EvaluationResult) -> None:
    """Write one row per case (see :meth:`EvaluationResult.rows`) atomically, values with 6 decimals."""
    rows = result.rows()
    write_csv(path, rows, list(rows[0].keys()) if rows else ["case"], float_format=".6f")


def write_summary_json(path: str | os.PathLike, result: EvaluationResult) -> None:
    """Write the summary (plus the targets used) as JSON atomically."""
    summary: dict[str, Any] = {**result.summary, "targets": [asdict(t) for t in result.targets]}
    write_json(path, summary)


def load_summary(path: str | os.PathLike) -> EvaluationSummary:
    """Read a summary.json written by :func:`write_summary_json`; errors name the file."""
    s = read_json(path)
    if not isinstance(s, dict) or not isinstance(s.get("per_target"), dict) or not isinstance(s.get("mean"), dict):
        raise ValueError(f"{path}: not a cps3d evaluation summary (no 'per_target' and 'mean' entries)")
    return cast(EvaluationSummary, s)
