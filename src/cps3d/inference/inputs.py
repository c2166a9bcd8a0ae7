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
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["Case", "InputProblem", "list_cases", "select_part", "read_dicom_series", "strip_ending"]

_CHANNEL = re.compile(r"(.+)_(\d{4})")


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


def _dicom_cases(folder: Path) -> list[Case]:
    import SimpleITK as sitk

    series = sorted(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ())
    cases = []
    for n, sid in enumerate(series):
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid))
        case_id = folder.name if len(series) == 1 else f"{folder.name}_{n}"
        cases.append(Case(case_id, files, "dicom", sid, str(folder)))
        if len(series) > 1:
            log.info("%s: DICOM series %s -> case %s", folder, sid, case_id)
    return cases


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
                found = _dicom_cases(path)
                if not found:
                    problems.append(InputProblem(str(path), "no scans found: no file ending in "
                                                 f"{', '.join(endings)} and no DICOM series"))
                dicom.extend(found)
                continue
        else:
            stem = strip_ending(path.name, endings)
            if stem is None:
                problems.append(InputProblem(str(path), f"not a readable scan type (expected an ending in "
                                             f"{', '.join(endings)}, or a DICOM series folder)"))
                continue
            files = [(path, stem)]
        for f, stem in files:
            m = _CHANNEL.fullmatch(stem)
            if m is not None and (num_channels > 1 or int(m.group(2)) == 0):
                channel_files.setdefault(m.group(1), {}).setdefault(int(m.group(2)), []).append(str(f))
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
        expected = set(range(num_channels))
        if set(channels) != expected:
            missing = sorted(expected - set(channels))
            extra = sorted(set(channels) - expected)
            what = []
            if missing:
                what.append(f"missing channel(s) {', '.join(f'{c:04d}' for c in missing)}")
            if extra:
                what.append(f"channel(s) {', '.join(f'{c:04d}' for c in extra)} beyond the model's {num_channels}")
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


def select_part(cases: Sequence[Case], part_id: int, num_parts: int) -> list[Case]:
    """The ``part_id``-th of ``num_parts`` disjoint shares of ``cases`` sorted by case id: every ``num_parts``-th
    case starting at ``part_id`` (nnU-Net's split). The shares of all part ids are disjoint and cover every case."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ValueError(f"part_id={part_id}, num_parts={num_parts}: need num_parts >= 1 and "
                         f"0 <= part_id < num_parts")
    return sorted(cases, key=lambda c: c.case_id)[part_id::num_parts]


def read_dicom_series(case: Case) -> tuple[np.ndarray, dict]:
    """Read a DICOM series the way nnU-Net's SimpleITKIO reads a file: ``(array (1, k, j, i) float32, properties)``
    with ``properties['spacing']`` in array order and ``properties['sitk_stuff']`` holding the series' geometry
    (spacing, origin, direction in index order), which is what the output is written with."""
    import SimpleITK as sitk

    if case.kind != "dicom":
        raise ValueError(f"case {case.case_id} is not a DICOM series")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(case.files))
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise ValueError(f"{case.source}: cannot read the series ({str(e).strip().splitlines()[-1]})") from e
    if image.GetDimension() != 3:
        raise ValueError(f"{case.source}: expected a 3D series, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{case.source}: expected grey values, got {image.GetNumberOfComponentsPerPixel()} "
                         "components per voxel")
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)[None]
    properties = {
        "sitk_stuff": {"spacing": image.GetSpacing(), "origin": image.GetOrigin(), "direction": image.GetDirection()},
        "spacing": [abs(float(s)) for s in image.GetSpacing()[::-1]],
    }
    return array, properties
