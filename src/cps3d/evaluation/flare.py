"""Segmentation evaluation with the FLARE 2022 rules: DSC and NSD per case and organ, folders, summaries, tables.

Rules, per case and per evaluated structure ("target": a label, or a region made of several labels), computed on
the reference's grid with the reference's spacing:

1. Reference and prediction both empty: DSC = NSD = 1. Exactly one of them empty: DSC = NSD = 0. (Decided on the
   whole volume, before rule 2.)
2. Aorta (5), inferior vena cava (6) and esophagus (10): both masks are restricted to the reference's slices of
   that organ along the axial axis (the voxel axis most aligned with the patient's head-foot direction, from the
   reference's direction cosines). ``slice_range="official"`` (the default) reproduces FLARE 2022's evaluation
   script, whose Python slice ``lo:hi`` stops before the reference's highest slice; ``"inclusive"`` keeps the
   highest slice too, as the rule is worded. The default is the script's convention because every published FLARE
   2022 number (the leaderboard, the 3D-CPS paper's tables) was computed with it. An organ lying on a single slice
   keeps that slice under both conventions (the script would compare empty arrays there).
3. NSD tolerances in mm: liver 5, right kidney 3, spleen 3, pancreas 5, aorta 2, IVC 2, right adrenal 2, left
   adrenal 2, gallbladder 2, esophagus 3, stomach 5, duodenum 7, left kidney 3; other labels get
   ``default_tolerance_mm``; any of them can be overridden by name or number.
4. DSC below ``nsd_min_dice`` (0.2): NSD = 0 (and is not computed).

Which labels are scored: with a dataset.json, all of its labels (background excluded; a list value is an nnU-Net
region, the union of those labels). Without one, every label value present in at least one file; an organ absent
from all files is then missing from the table, whereas FLARE's script always scores all 13 (absent from both files:
1), so pass the dataset.json to reproduce FLARE's means exactly.

Which labels are FLARE organs: with a dataset.json, a label numbered 1..13 whose name is FLARE's name for that
number (case, spaces, underscores and common abbreviations such as "RK", "IVC", "postcava" do not matter). Without
one, labels 1..13 are taken as FLARE's numbering and any other label found gets the default tolerance (a warning
says so). Only FLARE organs get FLARE's tolerances and rule 2.

DSC and NSD come from :mod:`cps3d.evaluation.metrics`; NSD matches the ``surface-distance`` reference.
"""

from __future__ import annotations

import csv
import difflib
import io
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cps3d.evaluation.metrics import Box, dice, label_bounding_boxes, normalized_surface_dice, union_box
from cps3d.files import atomic_path, read_json, write_json
from cps3d.images import ImageFileError, read_image_checked, read_image_info
from cps3d.parallel import imap_cases

log = logging.getLogger(__name__)

__all__ = [
    "FLARE_ORGANS",
    "FLARE_SLICE_RANGE_LABELS",
    "Target",
    "EvaluationConfig",
    "CaseResult",
    "EvaluationResult",
    "flare_targets",
    "targets_from_dataset_json",
    "load_tolerances",
    "axial_axis",
    "evaluate_label_maps",
    "evaluate_case_files",
    "evaluate_folders",
    "summarize",
    "write_per_case_csv",
    "write_summary_json",
    "pair_files",
    "read_label_map",
    "format_table",
    "compare_summaries",
    "load_summary",
    "CasesNotScored",
    "MissingPredictions",
]

DEFAULT_TOLERANCE_MM = 2.0
SLICE_RANGES = ("official", "inclusive")


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


@dataclass(frozen=True)
class FlareOrgan:
    number: int
    name: str  # as in FLARE 2022's dataset.json
    short: str  # as in FLARE's evaluation script and the 3D-CPS paper's tables
    tolerance_mm: float
    aliases: tuple[str, ...] = ()


FLARE_ORGANS: tuple[FlareOrgan, ...] = (
    FlareOrgan(1, "liver", "Liver", 5.0),
    FlareOrgan(2, "right kidney", "RK", 3.0, ("kidney right", "rk", "r kidney")),
    FlareOrgan(3, "spleen", "Spleen", 3.0),
    FlareOrgan(4, "pancreas", "Pancreas", 5.0),
    FlareOrgan(5, "aorta", "Aorta", 2.0),
    FlareOrgan(6, "inferior vena cava", "IVC", 2.0, ("ivc", "postcava", "vena cava inferior")),
    FlareOrgan(7, "right adrenal gland", "RAG", 2.0, ("adrenal gland right", "rag", "right adrenal")),
    FlareOrgan(8, "left adrenal gland", "LAG", 2.0, ("adrenal gland left", "lag", "left adrenal")),
    FlareOrgan(9, "gallbladder", "Gallbladder", 2.0, ("gall bladder",)),
    FlareOrgan(10, "esophagus", "Esophagus", 3.0, ("oesophagus",)),
    FlareOrgan(11, "stomach", "Stomach", 5.0),
    FlareOrgan(12, "duodenum", "Duodenum", 7.0),
    FlareOrgan(13, "left kidney", "LK", 3.0, ("kidney left", "lk", "l kidney")),
)
FLARE_SLICE_RANGE_LABELS = (5, 6, 10)
_FLARE_BY_NUMBER = {o.number: o for o in FLARE_ORGANS}


def _norm_name(name: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", name.lower()).split())


def _flare_organ_for(number: int, name: str | None) -> FlareOrgan | None:
    organ = _FLARE_BY_NUMBER.get(number)
    if organ is None:
        return None
    if name is None:
        return organ
    n = _norm_name(name)
    if n in {_norm_name(organ.name), _norm_name(organ.short), *(_norm_name(a) for a in organ.aliases)}:
        return organ
    return None


# ---------------------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class Target:
    """One evaluated structure.

    ``values``: the label values that form it (one for a plain label; several for an nnU-Net region).
    ``tolerance_mm``: NSD tolerance. ``slice_range``: restrict to the reference's axial extent (FLARE rule 2).
    ``flare``: True if this is one of FLARE's 13 organs.
    """

    name: str
    values: tuple[int, ...]
    tolerance_mm: float
    slice_range: bool = False
    flare: bool = False

    def __post_init__(self):
        if not self.name:
            raise ValueError("a target needs a name")
        if not self.values or any(int(v) != v or v <= 0 for v in self.values):
            raise ValueError(f"target {self.name!r}: label values must be positive integers, got {self.values}")
        if not (math.isfinite(self.tolerance_mm) and self.tolerance_mm >= 0):
            raise ValueError(f"target {self.name!r}: tolerance must be a finite number of mm >= 0, "
                             f"got {self.tolerance_mm}")


@dataclass(frozen=True)
class EvaluationConfig:
    """How cases are scored.

    ``targets``: the structures to evaluate; None means "every label found in the files", with labels 1..13 taken
    as FLARE's organs. ``default_tolerance_mm``: NSD tolerance of labels without a FLARE or user tolerance (used
    when targets are discovered). ``tolerance_overrides``: {label number or name: mm} applied to discovered targets.
    ``slice_range``: "official" or "inclusive" (module docstring). ``nsd_min_dice``: below this DSC, NSD = 0.
    ``file_ending``: file name ending that pairs predictions with references.
    """

    targets: tuple[Target, ...] | None = None
    default_tolerance_mm: float = DEFAULT_TOLERANCE_MM
    tolerance_overrides: tuple[tuple[str, float], ...] = ()
    slice_range: str = "official"
    nsd_min_dice: float = 0.2
    file_ending: str = ".nii.gz"

    def __post_init__(self):
        if self.slice_range not in SLICE_RANGES:
            hint = difflib.get_close_matches(str(self.slice_range), SLICE_RANGES, n=1)
            raise ValueError(f"slice_range must be one of {SLICE_RANGES}, got {self.slice_range!r}"
                             + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        if not (math.isfinite(self.default_tolerance_mm) and self.default_tolerance_mm >= 0):
            raise ValueError(f"default_tolerance_mm must be a finite number >= 0, got {self.default_tolerance_mm}")
        if not (0.0 <= self.nsd_min_dice <= 1.0):
            raise ValueError(f"nsd_min_dice must lie in [0, 1], got {self.nsd_min_dice}")
        if not self.file_ending or "/" in self.file_ending:
            raise ValueError(f"file_ending must be a non-empty file name ending like '.nii.gz', got "
                             f"{self.file_ending!r}")
        if self.targets is not None:
            if not self.targets:
                raise ValueError("targets is empty: nothing to evaluate")
            names = [t.name for t in self.targets]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"target names must be unique, repeated: {dup}")
        for key, mm in self.tolerance_overrides:
            if not (math.isfinite(mm) and mm >= 0):
                raise ValueError(f"tolerance for {key!r} must be a finite number of mm >= 0, got {mm}")

    def discovered_target(self, value: int) -> Target:
        """Target for a label value found in the files when no dataset.json was given."""
        organ = _flare_organ_for(value, None)
        name = organ.name if organ else f"label_{value}"
        tol = organ.tolerance_mm if organ else self.default_tolerance_mm
        for key, mm in self.tolerance_overrides:
            if key == str(value) or (organ is not None and _norm_name(key) == _norm_name(organ.name)):
                tol = mm
        return Target(name, (value,), tol, slice_range=bool(organ and value in FLARE_SLICE_RANGE_LABELS),
                      flare=organ is not None)


def flare_targets(tolerances: Mapping[str, float] | None = None) -> tuple[Target, ...]:
    """The 13 FLARE 2022 organs with FLARE's tolerances (optionally overridden by name or number)."""
    dj = {"labels": {"background": 0, **{o.name: o.number for o in FLARE_ORGANS}}}
    return targets_from_dataset_json(dj, tolerances=tolerances)


def targets_from_dataset_json(dataset_json: Mapping[str, Any] | str | os.PathLike,
                              default_tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                              tolerances: Mapping[str, float] | None = None) -> tuple[Target, ...]:
    """Targets from a dataset.json (a path or its loaded dict): every label except background (0).

    A label whose value is a list is an nnU-Net region (the union of those labels). ``tolerances`` overrides
    tolerances by label name or number (as a string); an unknown key is an error. An ``ignore`` label is refused:
    surface metrics have no defined way to skip voxels.
    """
    where = str(dataset_json) if isinstance(dataset_json, (str, os.PathLike)) else "dataset.json"
    dj = read_json(dataset_json) if isinstance(dataset_json, (str, os.PathLike)) else dataset_json
    return _targets(dj, where, default_tolerance_mm, tolerances)


def _targets(dj: Any, where: str, default_tolerance_mm: float,
             tolerances: Mapping[str, float] | None) -> tuple[Target, ...]:
    labels = dj.get("labels") if isinstance(dj, Mapping) else None
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError(f"{where}: no 'labels' mapping")
    targets = []
    for name, value in labels.items():
        if name == "ignore":
            raise ValueError(f"{where}: has an 'ignore' label; DSC/NSD evaluation with ignored voxels is not "
                             "supported (remove it from a copy of the dataset.json)")
        values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        try:
            values = tuple(int(v) for v in values)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: label {name!r} has a non-integer value {value!r}") from e
        if values == (0,) or (len(values) > 1 and all(v == 0 for v in values)):
            continue
        values = tuple(v for v in values if v != 0)
        organ = _flare_organ_for(values[0], name) if len(values) == 1 else None
        tol = organ.tolerance_mm if organ else float(default_tolerance_mm)
        targets.append(Target(str(name), values, tol,
                              slice_range=bool(organ and organ.number in FLARE_SLICE_RANGE_LABELS),
                              flare=organ is not None))
    if not targets:
        raise ValueError(f"{where}: no labels besides background")
    if tolerances:
        targets = list(_apply_tolerances(targets, tolerances, where))
    return tuple(targets)


def _apply_tolerances(targets: Sequence[Target], tolerances: Mapping[str, float], where: str) -> list[Target]:
    by_key: dict[str, int] = {}
    for i, t in enumerate(targets):
        by_key[t.name] = i
        by_key[_norm_name(t.name)] = i
        if len(t.values) == 1:
            by_key[str(t.values[0])] = i
    out = list(targets)
    for key, mm in tolerances.items():
        found = by_key.get(str(key), by_key.get(_norm_name(str(key))))
        if found is None:
            valid = sorted({t.name for t in targets} | {str(t.values[0]) for t in targets if len(t.values) == 1})
            hint = difflib.get_close_matches(str(key), valid, n=1)
            raise ValueError(f"tolerance given for {key!r}, which is not a label of {where}; valid: {valid}"
                             + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        t = out[found]
        out[found] = Target(t.name, t.values, float(mm), t.slice_range, t.flare)
    return out


def load_tolerances(path: str | os.PathLike) -> dict[str, float]:
    """Read ``{"label name or number": mm}`` from a JSON file; errors name the file and the bad entry."""
    obj = read_json(path)
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: expected a non-empty JSON object {{\"label name or number\": mm}}")
    out = {}
    for key, mm in obj.items():
        if isinstance(mm, bool) or not isinstance(mm, (int, float)) or not math.isfinite(mm) or mm < 0:
            raise ValueError(f"{path}: tolerance of {key!r} must be a number of mm >= 0, got {mm!r}")
        out[str(key)] = float(mm)
    return out


# ---------------------------------------------------------------------------------------------------------------
# one case


def axial_axis(direction: Sequence[float], ndim: int = 3) -> int:
    """Numpy axis (SimpleITK array order, i.e. reversed index order) most aligned with the head-foot direction.

    ``direction``: SimpleITK's row-major direction matrix (``ndim * ndim`` values; column c is index axis c in
    world coordinates, world axis 2 being head-foot in both LPS and RAS). For a usual axial NIfTI this is axis 0 of
    the SimpleITK array, i.e. the last axis in nibabel order.
    """
    if ndim != 3:
        raise ValueError(f"an axial axis is defined for 3D images only, got {ndim}D")
    d = np.asarray(direction, np.float64).reshape(3, 3)
    index_axis = int(np.argmax(np.abs(d[2])))
    return ndim - 1 - index_axis


def _slice_window(ref_box: tuple[slice, ...], axis: int, convention: str) -> slice:
    lo, hi = ref_box[axis].start, ref_box[axis].stop - 1  # reference's lowest and highest slice (inclusive)
    if convention == "inclusive" or hi == lo:
        return slice(lo, hi + 1)
    return slice(lo, hi)


def evaluate_label_maps(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float],
                        targets: Sequence[Target], axial: int | None = None, slice_range: str = "official",
                        nsd_min_dice: float = 0.2) -> dict[str, tuple[float, float]]:
    """DSC and NSD of every target for one case: ``{target name: (dsc, nsd)}`` under the FLARE rules.

    ``pred``, ``ref``: integer label maps of the same shape (2D or 3D), on the same grid. ``spacing_mm``: voxel
    size along each array axis (mm). ``axial``: the array axis of rule 2 (see :func:`axial_axis`); None skips rule 2
    (2D images). Bounding boxes of all labels come from one pass over each map; every target is then evaluated on
    its own crop, so no full-volume mask is ever built.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference shapes differ: {pred.shape} vs {ref.shape}")
    if len(spacing_mm) != ref.ndim:
        raise ValueError(f"spacing has {len(spacing_mm)} values for a {ref.ndim}D label map")
    if slice_range not in SLICE_RANGES:
        raise ValueError(f"slice_range must be one of {SLICE_RANGES}, got {slice_range!r}")
    if not targets:
        return {}
    max_label = max(max(t.values) for t in targets)
    return _score(pred, ref, label_bounding_boxes(pred, max_label), label_bounding_boxes(ref, max_label),
                  tuple(float(s) for s in spacing_mm), targets, axial, slice_range, nsd_min_dice)


def _score(pred: np.ndarray, ref: np.ndarray, boxes_p: Sequence[Box | None], boxes_r: Sequence[Box | None],
           spacing: tuple[float, ...], targets: Sequence[Target], axial: int | None, slice_range: str,
           nsd_min_dice: float) -> dict[str, tuple[float, float]]:
    """The rules of the module docstring, given the bounding boxes of labels 1..len(boxes) of each map."""

    def box_of(boxes: Sequence[Box | None], values: tuple[int, ...]) -> Box | None:
        return union_box(*(boxes[v - 1] for v in values if v <= len(boxes)))

    results: dict[str, tuple[float, float]] = {}
    for t in targets:
        box_p, box_r = box_of(boxes_p, t.values), box_of(boxes_r, t.values)
        if box_p is None and box_r is None:
            results[t.name] = (1.0, 1.0)
            continue
        if box_p is None or box_r is None:
            results[t.name] = (0.0, 0.0)
            continue
        box = union_box(box_p, box_r)
        if t.slice_range and axial is not None:
            window = _slice_window(box_r, axial, slice_range)
            box = tuple(window if a == axial else s for a, s in enumerate(box))
        if len(t.values) == 1:
            p, r = pred[box] == t.values[0], ref[box] == t.values[0]
        else:
            p, r = np.isin(pred[box], t.values), np.isin(ref[box], t.values)
        dsc = dice(p, r)
        nsd = 0.0 if dsc < nsd_min_dice else normalized_surface_dice(p, r, spacing, t.tolerance_mm)
        results[t.name] = (dsc, nsd)
    return results


@dataclass(frozen=True)
class Grid:
    """Geometry of an image as SimpleITK reports it (index order x, y, z; mm)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    def differences(self, other: Grid) -> list[str]:
        from cps3d.dataset import DIRECTION_TOLERANCE, ORIGIN_TOLERANCE_MM, SPACING_TOLERANCE_MM

        out = []
        if self.size != other.size:
            return [f"size {other.size} vs reference {self.size}"]
        if not np.allclose(self.spacing, other.spacing, rtol=1e-5, atol=SPACING_TOLERANCE_MM):
            out.append(f"spacing {_fmt(other.spacing)} vs reference {_fmt(self.spacing)} mm")
        if not np.allclose(self.origin, other.origin, rtol=0, atol=ORIGIN_TOLERANCE_MM):
            out.append(f"origin {_fmt(other.origin)} vs reference {_fmt(self.origin)} mm")
        if not np.allclose(self.direction, other.direction, rtol=0, atol=DIRECTION_TOLERANCE):
            out.append(f"direction {_fmt(other.direction)} vs reference {_fmt(self.direction)}")
        return out


def _fmt(v: Sequence[float]) -> str:
    return "(" + ", ".join(f"{x:.6g}" for x in v) + ")"


def read_grid(path: str | os.PathLike) -> Grid:
    """Read only the header of an image file; errors (FileNotFoundError, ValueError) name the file."""
    info = read_image_info(path)
    if info.components != 1:
        raise ImageFileError(path, f"has {info.components} components per voxel; a label map has one")
    return Grid(info.size, info.spacing, info.origin, info.direction)


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
    return arr, Grid(info.size, info.spacing, info.origin, info.direction)


@dataclass(frozen=True)
class CaseResult:
    """Scores of one case: ``scores[target name] = (dsc, nsd)``."""

    case: str
    scores: dict[str, tuple[float, float]]
    targets: tuple[Target, ...] = field(default=(), repr=False)


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
    scores = _score(pred, ref, boxes_p, boxes_r, spacing, targets, axis, config.slice_range, config.nsd_min_dice)
    return CaseResult(case or _case_name(pred_path, config.file_ending), scores, targets)


def _case_name(path: str | os.PathLike, ending: str) -> str:
    name = os.path.basename(str(path))
    return name[: -len(ending)] if name.endswith(ending) else name


# ---------------------------------------------------------------------------------------------------------------
# folders


@dataclass(frozen=True)
class EvaluationResult:
    """Per-case rows, the targets (in table order) and the summary of a folder evaluation."""

    cases: tuple[CaseResult, ...]
    targets: tuple[Target, ...]
    summary: dict

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
        targets = _targets(dj, where, default_tolerance_mm, tolerances)
        file_ending = dj.get("file_ending", ".nii.gz")
        if not isinstance(file_ending, str):
            raise ValueError(f"{where}: file_ending must be a string like '.nii.gz', got {file_ending!r}")
        config = EvaluationConfig(targets, default_tolerance_mm, (), slice_range, nsd_min_dice, file_ending)
        log.debug("%s: %d target(s), %d FLARE organ(s)", where, len(targets), sum(t.flare for t in targets))
    else:
        overrides = tuple((str(k), float(v)) for k, v in (tolerances or {}).items())
        for key, _ in overrides:
            if not key.isdigit() and not any(_norm_name(key) == _norm_name(o.name) for o in FLARE_ORGANS):
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


# ---------------------------------------------------------------------------------------------------------------
# summaries, files and tables


def summarize(cases: Sequence[CaseResult], targets: Sequence[Target]) -> dict:
    """Mean and standard deviation (over cases, ddof=0) of DSC and NSD per target, and the mean over targets.

    Returns ``{"num_cases", "per_target": {name: {"labels", "tolerance_mm", "flare", "DSC_mean", "DSC_std",
    "NSD_mean", "NSD_std"}}, "mean": {"DSC_mean", "DSC_std", "NSD_mean", "NSD_std"}}``; the overall means are means
    of the per-target means (the paper's mDSC), the overall stds those of the per-case target means.
    """
    if not cases:
        raise ValueError("no cases to summarize")
    per_target = {}
    for t in targets:
        d = np.array([c.scores[t.name][0] for c in cases], np.float64)
        n = np.array([c.scores[t.name][1] for c in cases], np.float64)
        per_target[t.name] = {"labels": list(t.values), "tolerance_mm": t.tolerance_mm, "flare": t.flare,
                              "slice_range": t.slice_range, "DSC_mean": float(d.mean()), "DSC_std": float(d.std()),
                              "NSD_mean": float(n.mean()), "NSD_std": float(n.std())}
    case_d = np.array([np.mean([c.scores[t.name][0] for t in targets]) for c in cases])
    case_n = np.array([np.mean([c.scores[t.name][1] for t in targets]) for c in cases])
    mean = {"DSC_mean": float(np.mean([v["DSC_mean"] for v in per_target.values()])),
            "DSC_std": float(case_d.std()),
            "NSD_mean": float(np.mean([v["NSD_mean"] for v in per_target.values()])),
            "NSD_std": float(case_n.std())}
    return {"num_cases": len(cases), "per_target": per_target, "mean": mean}


def write_per_case_csv(path: str | os.PathLike, result: EvaluationResult) -> None:
    """Write one row per case (see :meth:`EvaluationResult.rows`) atomically, values with 6 decimals."""
    rows = result.rows()
    fields = list(rows[0].keys()) if rows else ["case"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(buf.getvalue())


def write_summary_json(path: str | os.PathLike, result: EvaluationResult) -> None:
    """Write the summary (plus the targets used) as JSON atomically."""
    summary = dict(result.summary)
    summary["targets"] = [asdict(t) for t in result.targets]
    write_json(path, summary)


def load_summary(path: str | os.PathLike) -> dict:
    """Read a summary.json written by :func:`write_summary_json`; errors name the file."""
    s = read_json(path)
    if not isinstance(s, dict) or not isinstance(s.get("per_target"), dict) or not isinstance(s.get("mean"), dict):
        raise ValueError(f"{path}: not a cps3d evaluation summary (no 'per_target' and 'mean' entries)")
    return s


def _display_name(name: str, info: Mapping[str, Any]) -> str:
    if info.get("flare"):
        labels = info.get("labels") or []
        organ = _FLARE_BY_NUMBER.get(labels[0]) if len(labels) == 1 else None
        if organ is not None:
            return organ.short
    return name


def format_table(summary: Mapping[str, Any], digits: int = 4) -> str:
    """Organs as rows, ``DSC`` and ``NSD`` columns as ``mean ± std`` (fractions), and a ``mean`` row.

    FLARE organs are shown by the short names of FLARE's script and the 3D-CPS paper (Liver, RK, ..., LK).
    """
    per = summary["per_target"]
    rows = [(_display_name(n, v), f"{v['DSC_mean']:.{digits}f} ± {v['DSC_std']:.{digits}f}",
             f"{v['NSD_mean']:.{digits}f} ± {v['NSD_std']:.{digits}f}") for n, v in per.items()]
    m = summary["mean"]
    rows.append(("mean", f"{m['DSC_mean']:.{digits}f} ± {m['DSC_std']:.{digits}f}",
                 f"{m['NSD_mean']:.{digits}f} ± {m['NSD_std']:.{digits}f}"))
    header = (f"organ ({summary.get('num_cases', '?')} cases)", "DSC", "NSD")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = [f"{header[0]:<{widths[0]}}  {header[1]:>{widths[1]}}  {header[2]:>{widths[2]}}",
             "-" * (widths[0] + widths[1] + widths[2] + 4)]
    for i, r in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * (widths[0] + widths[1] + widths[2] + 4))
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}")
    return "\n".join(lines)


def compare_summaries(a: Mapping[str, Any], b: Mapping[str, Any], name_a: str = "A", name_b: str = "B",
                      digits: int = 4) -> str:
    """Two summaries side by side: per organ, DSC and NSD means of A and B and the difference B - A.

    Organs are matched by name; an organ in only one summary shows '-' for the other and no difference.
    """
    pa, pb = a["per_target"], b["per_target"]
    names = list(pa) + [n for n in pb if n not in pa]

    def cell(d: Mapping | None, key: str) -> str:
        return f"{d[key]:.{digits}f}" if d is not None else "-"

    def diff(x: Mapping | None, y: Mapping | None, key: str) -> str:
        return f"{y[key] - x[key]:+.{digits}f}" if x is not None and y is not None else "-"

    header = ["organ", f"DSC {name_a}", f"DSC {name_b}", "dDSC", f"NSD {name_a}", f"NSD {name_b}", "dNSD"]
    rows = []
    for n in names:
        x, y = pa.get(n), pb.get(n)
        label = _display_name(n, x or y)
        rows.append([label, cell(x, "DSC_mean"), cell(y, "DSC_mean"), diff(x, y, "DSC_mean"),
                     cell(x, "NSD_mean"), cell(y, "NSD_mean"), diff(x, y, "NSD_mean")])
    ma, mb = a["mean"], b["mean"]
    rows.append(["mean", cell(ma, "DSC_mean"), cell(mb, "DSC_mean"), diff(ma, mb, "DSC_mean"),
                 cell(ma, "NSD_mean"), cell(mb, "NSD_mean"), diff(ma, mb, "NSD_mean")])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join([f"{r[0]:<{widths[0]}}"] + [f"{c:>{w}}" for c, w in zip(r[1:], widths[1:])])

    sep = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = [f"A = {name_a}, B = {name_b} (differences are B - A)", line(header), sep]
    out += [line(r) for r in rows[:-1]] + [sep, line(rows[-1])]
    return "\n".join(out)

