"""What is scored, and with which NSD tolerance: :class:`Target`, :class:`EvaluationConfig`, targets from a
dataset.json or from FLARE's organ table, tolerance files.

Which labels are scored: with a dataset.json, all of its labels (background excluded; a list value is an nnU-Net
region, the union of those labels). Without one, every label value present in at least one file; an organ absent
from all files is then missing from the table, whereas FLARE's script always scores all 13 (absent from both files:
1), so pass the dataset.json to reproduce FLARE's means exactly.

Which labels are FLARE organs: with a dataset.json, a label numbered 1..13 whose name is FLARE's name for that
number (case, spaces, underscores and common abbreviations such as "RK", "IVC", "postcava" do not matter). Without
one, labels 1..13 are taken as FLARE's numbering and any other label found gets the default tolerance (a warning
says so). Only FLARE organs get FLARE's tolerances and the slice-range rule (see :mod:`cps3d.evaluation.scoring`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cps3d.evaluation.organs import FLARE_ORGANS, FLARE_SLICE_RANGE_LABELS, flare_organ_for, norm_name
from cps3d.files import read_json
from cps3d.options import check_choice, closest

__all__ = ["DEFAULT_TOLERANCE_MM", "SLICE_RANGES", "Target", "EvaluationConfig", "flare_targets",
           "targets_from_dataset_json", "targets_from_labels", "load_tolerances"]

DEFAULT_TOLERANCE_MM = 2.0
SLICE_RANGES = ("official", "inclusive")


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
        check_choice("slice_range", self.slice_range, SLICE_RANGES)
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
        organ = flare_organ_for(value, None)
        name = organ.name if organ else f"label_{value}"
        tol = organ.tolerance_mm if organ else self.default_tolerance_mm
        for key, mm in self.tolerance_overrides:
            if key == str(value) or (organ is not None and norm_name(key) == norm_name(organ.name)):
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
    return targets_from_labels(dj, where, default_tolerance_mm, tolerances)


def targets_from_labels(dj: Any, where: str, default_tolerance_mm: float,
                        tolerances: Mapping[str, float] | None) -> tuple[Target, ...]:
    """:func:`targets_from_dataset_json` of a loaded dataset.json ``dj``; ``where`` names it in errors."""
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
        organ = flare_organ_for(values[0], name) if len(values) == 1 else None
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
        by_key[norm_name(t.name)] = i
        if len(t.values) == 1:
            by_key[str(t.values[0])] = i
    out = list(targets)
    for key, mm in tolerances.items():
        found = by_key.get(str(key), by_key.get(norm_name(str(key))))
        if found is None:
            valid = sorted({t.name for t in targets} | {str(t.values[0]) for t in targets if len(t.values) == 1})
            hint = closest(key, valid)
            raise ValueError(f"tolerance given for {key!r}, which is not a label of {where}; valid: {valid}"
                             + (f" (did you mean {hint!r}?)" if hint else ""))
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
