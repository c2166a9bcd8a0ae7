"""Evaluation of files and folders: label maps read with their grid, predictions paired with references by name,
every case scored under the FLARE 2022 rules (:mod:`cps3d.evaluation.scoring`) in worker processes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cps3d.evaluation.metrics import label_bounding_boxes
from cps3d.evaluation.organs import FLARE_ORGANS, norm_name
from cps3d.evaluation.scoring import CaseResult, axial_axis, score_with_boxes
from cps3d.evaluation.summary import EvaluationResult, summarize
from cps3d.evaluation.targets import DEFAULT_TOLERANCE_MM, EvaluationConfig, targets_from_labels
from cps3d.files import read_json
from cps3d.images import Grid, ImageFileError, read_image_checked, read_image_info
from cps3d.parallel import imap_cases

log = logging.getLogger(__name__)

__all__ = ["CasesNotScored", "MissingPredictions", "read_grid", "read_label_map", "evaluate_case_files",
           "pair_files", "evaluate_folders"]


class CasesNotScored(ValueError):
    """Cases that cannot be scored: predictions missing, unreadable, truncated or on another grid than their
    reference. ``problems`` lists one line per file; nothing is summarised."""

    def __init__(self, heading: str, problems: Sequence[str]):
        self.heading = heading
        self.problems = list(problems)
        super().__init__(f"{heading}:\n  " + "\n  ".join(self.problems) if self.problems else heading)

    def __reduce__(self):
        return type(self), (self.heading, self.problems)


class MissingPredictions(CasesNotScored, FileNotFoundError):
    """References without a same-named prediction (also a FileNotFoundError)."""



def read_grid(path: str | os.PathLike) -> Grid:
    """Read only the header of an image file; errors (FileNotFoundError, ValueError) name the file."""
    info = read_image_info(path)
    if info.components != 1:
        raise ImageFileError(path, f"has {info.components} components per voxel; a label map has one")
    return info.grid


def read_label_map(path: str | os.PathLike) -> tuple[np.ndarray, Grid]:
    """Label map as an integer numpy array (SimpleITK order: z, y, x) and its grid, read through
    :func:`cps3d.images.read_image_checked` (an empty, truncated or corrupt file is refused: ITK's NIfTI reader
    would fill the missing voxels with background). Errors (FileNotFoundError, ValueError) name the file."""
    info, arr = read_image_checked(path)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.array_equal(arr, np.round(arr)):
            raise ImageFileError(path, f"a label map must hold integer values (dtype {arr.dtype} with fractions)")
        arr = arr.astype(np.int32)
    if arr.size and arr.min() < 0:
        raise ImageFileError(path, f"negative label {int(arr.min())}")
    return arr, info.grid



def evaluate_case_files(pred_path: str | os.PathLike, ref_path: str | os.PathLike, config: EvaluationConfig,
                        case: str | None = None) -> CaseResult:
    """Read one prediction/reference pair, check that they share a grid, and score it (see module docstring).

    With ``config.targets`` None, the targets are the labels present in either file (discovery mode).
    Raises ValueError naming the prediction file when its grid differs from the reference's.
    """
    ref, ref_grid = read_label_map(ref_path)
    pred, pred_grid = read_label_map(pred_path)
    problems = ref_grid.differences(pred_grid)
    if problems:
        raise ValueError(f"{pred_path}: not on the reference's grid ({ref_path}): " + "; ".join(problems))
    # one pass over each map gives every label's box; a label is present iff it has a box
    top = int(max(ref.max(initial=0), pred.max(initial=0)))
    boxes_r = label_bounding_boxes(ref, top)
    boxes_p = label_bounding_boxes(pred, top)
    present = {v for v in range(1, top + 1) if boxes_r[v - 1] is not None or boxes_p[v - 1] is not None}
    if config.targets is None:
        targets = tuple(config.discovered_target(v) for v in sorted(present))
    else:
        targets = config.targets
        extra = present - {v for t in targets for v in t.values}
        if extra:
            log.warning("%s: label value(s) %s not in the dataset.json labels: ignored", case or pred_path,
                        sorted(extra))
    spacing = tuple(float(s) for s in reversed(ref_grid.spacing))  # numpy order
    axis = axial_axis(ref_grid.direction, ref.ndim) if ref.ndim == 3 else None
    scores = score_with_boxes(pred, ref, boxes_p, boxes_r, spacing, targets, axis, config.slice_range, config.nsd_min_dice)
    return CaseResult(case or _case_name(pred_path, config.file_ending), scores, targets)


def _case_name(path: str | os.PathLike, ending: str) -> str:
    name = os.path.basename(str(path))
    return name[: -len(ending)] if name.endswith(ending) else name



def _list_files(folder: Path, ending: str) -> dict[str, Path]:
    return {f.name[: -len(ending)]: f for f in sorted(folder.iterdir())
            if f.is_file() and f.name.endswith(ending) and not f.name.startswith(".")}


def pair_files(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike,
               file_ending: str = ".nii.gz") -> list[tuple[str, Path, Path]]:
    """``[(case, pred path, ref path)]`` for every reference file, sorted by case.

    Raises FileNotFoundError if a folder is missing or holds no reference files, and :class:`MissingPredictions`
    (a FileNotFoundError too) if a reference has no prediction (the message lists the missing prediction files).
    Predictions without a reference are logged as a warning.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for what, d in (("prediction", pred_dir), ("reference", ref_dir)):
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: {what} folder not found")
    refs = _list_files(ref_dir, file_ending)
    preds = _list_files(pred_dir, file_ending)
    if not refs:
        raise FileNotFoundError(f"{ref_dir}: no reference files ending in {file_ending!r}")
    missing = sorted(set(refs) - set(preds))
    if missing:
        shown = ", ".join(f"{c}{file_ending}" for c in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise MissingPredictions(f"{pred_dir}: {len(missing)} of {len(refs)} prediction(s) missing: {shown}{more}",
                                 [])
    extra = sorted(set(preds) - set(refs))
    if extra:
        log.warning("%s: %d prediction(s) without a reference in %s, not evaluated: %s", pred_dir, len(extra),
                    ref_dir, ", ".join(f"{c}{file_ending}" for c in extra[:20]) + (" ..." if len(extra) > 20 else ""))
    return [(c, preds[c], refs[c]) for c in sorted(refs)]


def _check_grids(pairs: Sequence[tuple[str, Path, Path]]) -> None:
    problems = []
    for _case, pred, ref in pairs:
        try:
            diff = read_grid(ref).differences(read_grid(pred))
        except (FileNotFoundError, ValueError) as e:
            problems.append(str(e))
            continue
        if diff:
            problems.append(f"{pred}: not on the grid of {ref}: " + "; ".join(diff))
    if problems:
        raise CasesNotScored(f"{len(problems)} prediction(s) cannot be compared with their reference", problems)


def evaluate_folders(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike,
                     dataset_json: str | os.PathLike | Mapping[str, Any] | None = None,
                     tolerances: Mapping[str, float] | None = None, num_processes: int = 1,
                     default_tolerance_mm: float = DEFAULT_TOLERANCE_MM, slice_range: str = "official",
                     nsd_min_dice: float = 0.2, progress: bool = True) -> EvaluationResult:
    """Score every reference in ``ref_dir`` against the same-named file in ``pred_dir`` (FLARE 2022 rules).

    Files pair by name with the dataset.json's ``file_ending`` (else ``.nii.gz``); targets come from the
    dataset.json's labels (else from the labels present, see the module docstring). ``tolerances``: {label name or
    number: mm} overrides. Headers are checked first, so a missing prediction or a grid mismatch fails before any
    work with a message naming every file concerned; files that turn out truncated or corrupt when they are read
    fail after the other cases were scored, all named at once. Both raise :class:`CasesNotScored` (a ValueError;
    :class:`MissingPredictions` is also a FileNotFoundError); a missing folder or a bad dataset.json raise
    FileNotFoundError / ValueError. Cases run in ``num_processes`` processes with a progress bar. Returns the
    per-case scores and the summary.
    """
    file_ending = ".nii.gz"
    if dataset_json is not None:
        dj: Mapping[str, Any]
        if isinstance(dataset_json, (str, os.PathLike)):
            dj, where = read_json(dataset_json), str(dataset_json)
        else:
            dj, where = dataset_json, "dataset.json"
        targets = targets_from_labels(dj, where, default_tolerance_mm, tolerances)
        file_ending = dj.get("file_ending", ".nii.gz")
        if not isinstance(file_ending, str):
            raise ValueError(f"{where}: file_ending must be a string like '.nii.gz', got {file_ending!r}")
        config = EvaluationConfig(targets, default_tolerance_mm, (), slice_range, nsd_min_dice, file_ending)
        log.debug("%s: %d target(s), %d FLARE organ(s)", where, len(targets), sum(t.flare for t in targets))
    else:
        overrides = tuple((str(k), float(v)) for k, v in (tolerances or {}).items())
        for key, _ in overrides:
            if not key.isdigit() and not any(norm_name(key) == norm_name(o.name) for o in FLARE_ORGANS):
                raise ValueError(f"tolerance given for {key!r}: without a dataset.json, give label numbers or "
                                 f"FLARE organ names ({', '.join(o.name for o in FLARE_ORGANS)})")
        config = EvaluationConfig(None, default_tolerance_mm, overrides, slice_range, nsd_min_dice, file_ending)

    pairs = pair_files(pred_dir, ref_dir, file_ending)
    _check_grids(pairs)
    args = [(str(p), str(r), config, c) for c, p, r in pairs]
    results: list[CaseResult | None] = [None] * len(args)
    failures = []
    for i, res in imap_cases(evaluate_case_files, args, num_processes, desc="evaluate", progress=progress):
        if isinstance(res, BaseException):
            failures.append((pairs[i][0], f"{pairs[i][0]}: {res}"))
        else:
            results[i] = res
    if failures:
        raise CasesNotScored(f"{len(failures)} case(s) failed", [f for _, f in sorted(failures)])
    cases = tuple(r for r in results if r is not None)

    if config.targets is not None:
        targets = config.targets
    else:
        values = sorted({t.values[0] for c in cases for t in c.targets})
        if not values:
            raise ValueError(f"no labels in any file of {pred_dir} or {ref_dir}: nothing to evaluate")
        targets = tuple(config.discovered_target(v) for v in values)
        if any(v > 13 for v in values):
            log.warning("labels %s found without a dataset.json: labels 1-13 are scored as FLARE 2022 organs and "
                        "the others with the default tolerance %.3g mm; pass --dataset-json if this is not FLARE "
                        "data", values, default_tolerance_mm)
        filled = []
        for c in cases:  # a label absent from both files of a case: both empty, DSC = NSD = 1
            scores = {t.name: c.scores.get(t.name, (1.0, 1.0)) for t in targets}
            filled.append(CaseResult(c.case, scores, targets))
        cases = tuple(filled)
    summary = summarize(cases, targets)
    summary["pred_dir"] = str(Path(pred_dir).resolve())
    summary["ref_dir"] = str(Path(ref_dir).resolve())
    summary["config"] = {"slice_range": slice_range, "nsd_min_dice": nsd_min_dice,
                         "default_tolerance_mm": default_tolerance_mm, "file_ending": file_ending,
                         "dataset_json": None if dataset_json is None or isinstance(dataset_json, Mapping)
                         else str(dataset_json)}
    return EvaluationResult(cases, targets, summary)
