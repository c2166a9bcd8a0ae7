"""What ``cps3d predict`` reads: scan folders, lists of files and DICOM series, grouped into cases.

Naming follows nnU-Net: ``CASE_XXXX<ending>`` with XXXX the 4-digit channel index (``CASE_0000.nii.gz`` ...), all
channels of a case side by side. For single-channel models a plain name is a case too (``scan.nii.gz`` -> case
``scan``). A folder without image files but with DICOM files is read as DICOM series (one case per series, read with
SimpleITK's ImageSeriesReader; the case is the folder's name, with ``_<n>`` appended when it holds several series).
Files whose names start with '.' are ignored (temporary files of atomic writes among them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cps3d.dataset import channel_mismatch, channel_suffix, split_channel_name
from cps3d.images import error_text

log = logging.getLogger(__name__)

__all__ = ["Case", "InputProblem", "list_cases", "select_part", "read_dicom_series", "strip_ending"]

T = TypeVar("T")

@dataclass(frozen=True)
class Case:
    """One scan to predict. ``files``: its channel files in channel order (kind ``files``), or the slice files of
    one DICOM series (kind ``dicom``, with ``series_id`` and ``folder``)."""

    case_id: str
    files: tuple[str, ...]
    kind: str = "files"
    series_id: str | None = None
    folder: str | None = None

    @property
    def source(self) -> str:
        """A short description naming the input, for messages."""
        if self.kind == "dicom":
            return f"DICOM series {self.series_id} in {self.folder}"
        return ", ".join(self.files)


@dataclass(frozen=True)
class InputProblem:
    """An input that cannot become a case (misnamed file, missing channel, duplicate case id, empty folder)."""

    path: str
    message: str
    case_id: str | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def strip_ending(name: str, endings: Sequence[str]) -> str | None:
    """``name`` without the longest of ``endings`` it ends with (case-insensitive), or None if it has none."""
    for ending in sorted(endings, key=len, reverse=True):
        if name.lower().endswith(ending.lower()) and len(name) > len(ending):
            return name[: -len(ending)]
    return None


# names DICOM files usually have; a file without a DICOM name counts when it has the DICOM marker
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", "")


def _meant_as_dicom(path: Path) -> bool:
    """Whether a file that no series lists was meant to be a slice: a DICOM name (.dcm, .dicom, .ima, no suffix) or
    the 'DICM' marker DICOM files carry at byte 128 (a text or JSON file beside the series is not)."""
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return True


def _dicom_cases(folder: Path) -> tuple[list[Case], list[InputProblem]]:
    """The DICOM series of ``folder`` as cases, and the problems that stop them.

    GDCM leaves files it cannot read (truncated, corrupt, empty) out of every series without a word, and SimpleITK
    then builds the volume from the slices that remain, on a wrong grid. Such files make every series of the folder
    fail (which series a broken file belonged to cannot be known).
    """
    import SimpleITK as sitk

    series = sorted(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ())
    cases = []
    listed: set[str] = set()
    for n, sid in enumerate(series):
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid))
        listed.update(Path(f).name for f in files)
        case_id = folder.name if len(series) == 1 else f"{folder.name}_{n}"
        cases.append(Case(case_id, files, "dicom", sid, str(folder)))
        if len(series) > 1:
            log.info("%s: DICOM series %s -> case %s", folder, sid, case_id)
    stray = [f for f in sorted(folder.iterdir()) if not f.name.startswith(".") and f.is_file()
             and f.name not in listed and _meant_as_dicom(f)]
    if not stray or not cases:
        return cases, []
    names = [f.name + (" (empty)" if f.stat().st_size == 0 else "") for f in stray]
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    message = (f"{len(stray)} file(s) of the folder belong to no DICOM series (unreadable: truncated, corrupt or "
               f"empty): {shown}; without them the series would be read with slices missing")
    return [], [InputProblem(str(folder), message, c.case_id) for c in cases]


def list_cases(inputs: Sequence[str | os.PathLike], endings: Sequence[str], num_channels: int
               ) -> tuple[list[Case], list[InputProblem]]:
    """Group the given folders and files into cases, sorted by case id.

    ``endings``: file endings read as images (the model's ``file_ending`` first, then its reader's others).
    Returns ``(cases, problems)``; a problem never stops the others (a case with a problem is not in ``cases``).
    Raises FileNotFoundError for an input path that does not exist.
    """
    if num_channels < 1:
        raise ValueError(f"num_channels={num_channels}: must be at least 1")
    problems: list[InputProblem] = []
    channel_files: dict[str, dict[int, list[str]]] = {}
    plain: dict[str, list[str]] = {}
    dicom: list[Case] = []
    for given in inputs:
        path = Path(given).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{path}: input not found")
        if path.is_dir():
            names = sorted(n for n in os.listdir(path) if not n.startswith("."))
            files: list[tuple[Path, str]] = []  # (image file, its name without the ending)
            for n in names:
                stem = strip_ending(n, endings)
                if stem is not None and (path / n).is_file():
                    files.append((path / n, stem))
            if not files:
                found, broken = _dicom_cases(path)
                if not found and not broken:
                    problems.append(InputProblem(str(path), "no scans found: no file ending in "
                                                 f"{', '.join(endings)} and no DICOM series"))
                dicom.extend(found)
                problems.extend(broken)
                continue
        else:
            stem = strip_ending(path.name, endings)
            if stem is None:
                problems.append(InputProblem(str(path), f"not a readable scan type (expected an ending in "
                                             f"{', '.join(endings)}, or a DICOM series folder)"))
                continue
            files = [(path, stem)]
        for f, stem in files:
            named = split_channel_name(stem)
            if named is not None and (num_channels > 1 or named[1] == 0):
                channel_files.setdefault(named[0], {}).setdefault(named[1], []).append(str(f))
            elif num_channels == 1:
                plain.setdefault(stem, []).append(str(f))
            else:
                problems.append(InputProblem(str(f), f"the model has {num_channels} input channels: name the files "
                                             "CASE_XXXX<ending> (XXXX = 4-digit channel index, 0000 first)"))
    cases: dict[str, Case] = {}
    sources: dict[str, list[str]] = {}

    def add(case: Case) -> None:
        sources.setdefault(case.case_id, []).append(case.source)
        if case.case_id not in cases:
            cases[case.case_id] = case

    for case_id, channels in channel_files.items():
        duplicated = {c: fs for c, fs in channels.items() if len(fs) > 1}
        if duplicated:
            c, fs = next(iter(duplicated.items()))
            problems.append(InputProblem(fs[0], f"channel {c} of case {case_id} is given more than once: "
                                         f"{', '.join(fs)}", case_id))
            continue
        missing, extra = channel_mismatch(channels, num_channels)
        if missing or extra:
            what = []
            if missing:
                what.append(f"missing channel(s) {', '.join(channel_suffix(c) for c in missing)}")
            if extra:
                what.append(f"channel(s) {', '.join(channel_suffix(c) for c in extra)} beyond the model's "
                            f"{num_channels}")
            first = channels[min(channels)][0]
            problems.append(InputProblem(first, f"case {case_id}: {'; '.join(what)}", case_id))
            continue
        add(Case(case_id, tuple(channels[c][0] for c in range(num_channels))))
    for case_id, fs in plain.items():
        for file in fs:
            add(Case(case_id, (file,)))
    for case in dicom:
        if num_channels != 1:
            problems.append(InputProblem(case.folder or "", f"the model has {num_channels} input channels; a DICOM "
                                         "series gives one", case.case_id))
            continue
        add(case)
    for case_id, srcs in sources.items():
        if len(srcs) > 1:
            problems.append(InputProblem(srcs[1], f"case {case_id} is given more than once (also by {srcs[0]}); "
                                         "rename one of them", case_id))
            cases.pop(case_id, None)
    return [cases[k] for k in sorted(cases)], problems


def select_part(items: Sequence[T], part_id: int, num_parts: int,
                key: Callable[[Any], str] = attrgetter("case_id")) -> list[T]:
    """The ``part_id``-th of ``num_parts`` disjoint shares of ``items`` (cases, or anything ``key`` gives a case id
    of) sorted by case id: every ``num_parts``-th one starting at ``part_id`` (nnU-Net's split). The shares of all
    part ids are disjoint and cover every item."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ValueError(f"part_id={part_id}, num_parts={num_parts}: need num_parts >= 1 and "
                         f"0 <= part_id < num_parts")
    return sorted(items, key=key)[part_id::num_parts]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.strip().split("\\")]


def _slice_problem(reader, direction: Sequence[float], files: Sequence[str]) -> str | None:
    """What is wrong with the slices of a series read by ``reader`` (SimpleITK's ImageSeriesReader with its
    per-slice tags), or None: slices without a position or with another orientation, two slices at one position,
    and positions along the slice normal that are not evenly spaced (missing slices above all). SimpleITK only warns
    about the last and stacks the slices at one spacing anyway, which misplaces every slice after a gap."""
    n = len(files)
    if n < 2:
        return None
    positions, orientations = [], []
    for k in range(n):
        if not (reader.HasMetaDataKey(k, "0020|0032") and reader.HasMetaDataKey(k, "0020|0037")):
            return f"{Path(files[k]).name} has no Image Position / Orientation (Patient), so the slice spacing " \
                   "cannot be checked"
        try:
            positions.append(_floats(reader.GetMetaData(k, "0020|0032")))
            orientations.append(_floats(reader.GetMetaData(k, "0020|0037")))
        except ValueError:
            return f"{Path(files[k]).name}: unreadable Image Position / Orientation (Patient)"
    for k in range(1, n):
        if len(orientations[k]) != 6 or not np.allclose(orientations[k], orientations[0], atol=1e-4):
            return f"{Path(files[k]).name} has the orientation {orientations[k]}, {Path(files[0]).name} " \
                   f"{orientations[0]}: the slices do not form one volume"
    normal = np.asarray(direction, np.float64).reshape(3, 3)[:, 2]
    along = np.asarray(positions, np.float64) @ normal  # mm along the slice normal, in the series' order
    steps = np.diff(along)
    step = float(np.median(steps))
    same = np.flatnonzero(np.abs(steps) < 1e-3)
    if same.size:
        k = int(same[0])
        return f"{Path(files[k]).name} and {Path(files[k + 1]).name} are at the same position " \
               f"({along[k]:.4g} mm along the slice normal): a duplicated slice?"
    tolerance = max(0.01, 0.01 * abs(step))
    off = np.flatnonzero(np.abs(steps - step) > tolerance)
    if not off.size:
        return None
    gaps = [int(k) for k in off if steps[k] / step > 1.5]
    if gaps:
        described = [f"{round(steps[k] / step) - 1} between {Path(files[k]).name} and {Path(files[k + 1]).name} "
                     f"({steps[k]:.4g} mm apart)" for k in gaps[:5]]
        return "slice(s) missing: " + "; ".join(described) + (f"; {len(gaps) - 5} more gap(s)" if len(gaps) > 5
                                                              else "") + f" (the slice spacing is {step:.4g} mm)"
    return f"slices are not evenly spaced: steps from {steps.min():.4g} to {steps.max():.4g} mm along the slice " \
           f"normal (median {step:.4g} mm), first at {Path(files[int(off[0])]).name}; one grid cannot hold them"


def read_dicom_series(case: Case) -> tuple[np.ndarray, dict]:
    """Read a DICOM series the way nnU-Net's SimpleITKIO reads a file: ``(array (1, k, j, i) float32, properties)``
    with ``properties['spacing']`` in array order and ``properties['sitk_stuff']`` holding the series' geometry
    (spacing, origin, direction in index order), which is what the output is written with.

    Raises ValueError naming the series and its folder when it cannot be read, is not 3D grey values, or its slices
    do not lie on one grid (missing, duplicated, unevenly spaced or differently oriented slices)."""
    import SimpleITK as sitk

    if case.kind != "dicom":
        raise ValueError(f"case {case.case_id} is not a DICOM series")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(case.files))
    reader.MetaDataDictionaryArrayUpdateOn()  # every slice's tags, for the check of their positions
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise ValueError(f"{case.source}: cannot read the series ({error_text(e)})") from e
    if image.GetDimension() != 3:
        raise ValueError(f"{case.source}: expected a 3D series, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{case.source}: expected grey values, got {image.GetNumberOfComponentsPerPixel()} "
                         "components per voxel")
    problem = _slice_problem(reader, image.GetDirection(), case.files)
    if problem is not None:
        raise ValueError(f"{case.source}: {problem}")
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)[None]
    properties = {
        "sitk_stuff": {"spacing": image.GetSpacing(), "origin": image.GetOrigin(), "direction": image.GetDirection()},
        "spacing": [abs(float(s)) for s in image.GetSpacing()[::-1]],
    }
    return array, properties
