"""Evaluation: DSC and NSD under the FLARE 2022 rules, and FLARE's efficiency measures.

- :mod:`cps3d.evaluation.metrics`: ``dice`` and ``normalized_surface_dice`` on boolean masks (the NSD of the
  ``surface-distance`` reference, computed on crops), label-map bounding boxes.
- :mod:`cps3d.evaluation.flare`: FLARE 2022's per-case rules, folder evaluation, summaries, tables, comparisons.
- :mod:`cps3d.evaluation.profiler`: running time, CPU and GPU-memory areas, peak memory of a command or a block.
"""

from cps3d.evaluation.flare import (
    FLARE_ORGANS,
    CaseResult,
    EvaluationConfig,
    EvaluationResult,
    Target,
    axial_axis,
    compare_summaries,
    evaluate_case_files,
    evaluate_folders,
    evaluate_label_maps,
    flare_targets,
    format_table,
    load_summary,
    load_tolerances,
    summarize,
    targets_from_dataset_json,
    write_per_case_csv,
    write_summary_json,
)
from cps3d.evaluation.metrics import dice, label_bounding_boxes, normalized_surface_dice, surfel_area_table
from cps3d.evaluation.profiler import ProfileReport, ResourceProfiler, ResourceSummary, Sample, profile_command

__all__ = [
    "FLARE_ORGANS",
    "CaseResult",
    "EvaluationConfig",
    "EvaluationResult",
    "ProfileReport",
    "ResourceProfiler",
    "ResourceSummary",
    "Sample",
    "Target",
    "axial_axis",
    "compare_summaries",
    "dice",
    "evaluate_case_files",
    "evaluate_folders",
    "evaluate_label_maps",
    "flare_targets",
    "format_table",
    "label_bounding_boxes",
    "load_summary",
    "load_tolerances",
    "normalized_surface_dice",
    "profile_command",
    "summarize",
    "surfel_area_table",
    "targets_from_dataset_json",
    "write_per_case_csv",
    "write_summary_json",
]
