"""Evaluation: DSC and NSD under the FLARE 2022 rules, and FLARE's efficiency measures.

- :mod:`cps3d.evaluation.metrics`: ``dice`` and ``normalized_surface_dice`` on boolean masks (the NSD of the
  ``surface-distance`` reference, computed on crops), label-map bounding boxes.
- :mod:`cps3d.evaluation.organs`: FLARE 2022's organ table (numbers, names, NSD tolerances).
- :mod:`cps3d.evaluation.targets`: what is scored with which tolerance (from a dataset.json or FLARE's table).
- :mod:`cps3d.evaluation.scoring`: FLARE 2022's per-case rules on label maps in memory.
- :mod:`cps3d.evaluation.folders`: label-map files and prediction/reference folders scored case by case.
- :mod:`cps3d.evaluation.summary`: per-case rows, summaries, their CSV and JSON files.
- :mod:`cps3d.evaluation.tables`: text tables of one summary or two side by side.
- :mod:`cps3d.evaluation.profiler`: running time, CPU and GPU-memory areas, peak memory of a command or a block.
"""

from cps3d.evaluation.folders import (
    CasesNotScored,
    MissingPredictions,
    evaluate_case_files,
    evaluate_folders,
    pair_files,
    read_grid,
    read_label_map,
)
from cps3d.evaluation.metrics import dice, label_bounding_boxes, normalized_surface_dice, surfel_area_table
from cps3d.evaluation.organs import FLARE_LABELS, FLARE_ORGANS, FLARE_SLICE_RANGE_LABELS
from cps3d.evaluation.profiler import ProfileReport, ResourceProfiler, ResourceSummary, Sample, profile_command
from cps3d.evaluation.scoring import CaseResult, axial_axis, evaluate_label_maps
from cps3d.evaluation.summary import (
    EvaluationResult,
    load_summary,
    summarize,
    write_per_case_csv,
    write_summary_json,
)
from cps3d.evaluation.tables import compare_summaries, format_table
from cps3d.evaluation.targets import (
    EvaluationConfig,
    Target,
    flare_targets,
    load_tolerances,
    targets_from_dataset_json,
)

__all__ = [
    "FLARE_LABELS",
    "FLARE_ORGANS",
    "FLARE_SLICE_RANGE_LABELS",
    "CasesNotScored",
    "MissingPredictions",
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
    "pair_files",
    "profile_command",
    "read_grid",
    "read_label_map",
    "summarize",
    "surfel_area_table",
    "targets_from_dataset_json",
    "write_per_case_csv",
    "write_summary_json",
]
