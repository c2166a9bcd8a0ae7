"""Raw dataset layout (nnU-Net v2 plus ``imagesUnlabeled/``) and integrity checks.

Layout of a raw dataset folder ``DatasetNNN_Name``::

    dataset.json          channel_names, labels, numTraining, file_ending
    imagesTr/             CASE_0000.nii.gz (one file per channel, 4-digit channel index)
    labelsTr/             CASE.nii.gz
    imagesUnlabeled/      CASE_0000.nii.gz: scans without labels, used by CPS training only
    imagesTs/, labelsTs/  optional held-out test scans (labelsTs is a cps3d addition used for evaluation)

Unlabeled cases never enter a cross-validation split: every fold trains on all of them.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cps3d.files import read_json, stat_digest, write_json
from cps3d.images import Grid, ImageFileError, ImageInfo, read_image_checked, read_image_info
from cps3d.parallel import imap_cases

log = logging.getLogger(__name__)

LABELED_IMAGES = "imagesTr"
LABELS = "labelsTr"
UNLABELED_IMAGES = "imagesUnlabeled"
TEST_IMAGES = "imagesTs"
_CHANNEL_STEM = re.compile(r"(.+)_(\d{4})")
TEST_LABELS = "labelsTs"

_DATASET_NAME = re.compile(r"Dataset(\d{3})_[A-Za-z0-9_\-]+")


class DatasetError(ValueError):
    """A dataset that cannot be used as given; ``problems`` lists every (file, message) found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = [f"{len(problems)} problem(s) found in the dataset:"] + [f"  {p}" for p in problems]
        super().__init__("\n".join(lines))

    def __reduce__(self):  # rebuilt from the problems when it comes back from a worker process
        return type(self), (self.problems,)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file (or folder) of a dataset."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def dataset_id_from_name(name: str) -> int:
    m = _DATASET_NAME.fullmatch(name)
    if m is None:
        raise ValueError(f"{name!r} is not a dataset name of the form DatasetNNN_Name (three digits)")
    return int(m.group(1))


def find_dataset_name(dataset: str | int, roots: list[str]) -> str:
    """Resolve a dataset id (``7``, ``"7"``, ``"007"``) or name (``"Dataset007_Abdomen"``) to its folder name.

    An id is looked up as ``DatasetNNN_*`` in each existing folder of ``roots`` (raw, preprocessed, results);
    it must match exactly one name.
    """
    text = str(dataset).strip()
    if text.startswith("Dataset"):
        dataset_id_from_name(text)  # validates the form
        return text
    if not text.isdigit():
        raise ValueError(f"dataset {text!r}: give a numeric id (7) or a name like Dataset007_Abdomen")
    prefix = f"Dataset{int(text):03d}_"
    names: set[str] = set()
    for root in roots:
        if root and os.path.isdir(root):
            names.update(d for d in os.listdir(root) if d.startswith(prefix) and os.path.isdir(os.path.join(root, d)))
    if not names:
        raise FileNotFoundError(f"no dataset with id {int(text)} (a folder {prefix}*) in: "
                                + ", ".join(r for r in roots if r))
    if len(names) > 1:
        raise ValueError(f"dataset id {int(text)} is ambiguous: {sorted(names)}; pass the full name")
    return names.pop()


def _label_values(labels: dict) -> set[int]:
    values: set[int] = set()
    for v in labels.values():
        if isinstance(v, (list, tuple)):
            values.update(int(i) for i in v)
        else:
            values.add(int(v))
    return values


@dataclass(frozen=True)
class RawDataset:
    """A raw dataset folder and its ``dataset.json``."""

    folder: Path
    dataset_json: dict = field(repr=False)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> RawDataset:
        """Read a dataset folder's ``dataset.json``. Raises FileNotFoundError if the folder does not exist and
        DatasetError if its dataset.json is missing, not valid JSON or lacks what cps3d and nnU-Net need."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: dataset folder not found")
        path = folder / "dataset.json"
        if not path.is_file():
            raise DatasetError([Problem(str(path), "file not found (every dataset needs one: channel_names, labels, "
                                                   "numTraining, file_ending)")])
        try:
            dj = read_json(path)
        except ValueError as e:
            raise DatasetError([Problem(str(path), str(e).removeprefix(f"{path}: "))]) from e
        problems = validate_dataset_json(dj, str(path))
        if problems:
            raise DatasetError(problems)
        return cls(folder, dj)

    @classmethod
    def from_root(cls, raw_root: str, dataset: str | int) -> RawDataset:
        name = find_dataset_name(dataset, [raw_root])
        return cls.load(Path(raw_root) / name)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def file_ending(self) -> str:
        return self.dataset_json["file_ending"]

    @property
    def num_channels(self) -> int:
        return len(self.dataset_json["channel_names"])

    @property
    def label_values(self) -> set[int]:
        return _label_values(self.dataset_json["labels"])

    def _cases(self, subfolder: str) -> tuple[dict[str, list[str]], list[Problem]]:
        return list_image_cases(self.folder / subfolder, self.file_ending, self.num_channels)

    def labeled_cases(self) -> dict[str, dict]:
        """``{case: {"images": [paths], "label": path}}`` of complete labeled cases (see ``check_layout``)."""
        if "dataset" in self.dataset_json:  # nnU-Net's explicit file list
            out = {}
            for k, v in self.dataset_json["dataset"].items():
                out[k] = {"images": [str(self._resolve(i)) for i in v["images"]], "label": str(self._resolve(v["label"]))}
            return out
        images, _ = self._cases(LABELED_IMAGES)
        return {k: {"images": v, "label": str(self.folder / LABELS / f"{k}{self.file_ending}")}
                for k, v in images.items() if (self.folder / LABELS / f"{k}{self.file_ending}").is_file()}

    def unlabeled_cases(self) -> dict[str, list[str]]:
        """``{case: [channel paths]}`` from ``imagesUnlabeled/`` (empty if the folder does not exist)."""
        return self._cases(UNLABELED_IMAGES)[0]

    def test_cases(self) -> dict[str, dict]:
        """``{case: {"images": [...], "label": path or None}}`` from ``imagesTs/`` and ``labelsTs/``."""
        images, _ = self._cases(TEST_IMAGES)
        out = {}
        for k, v in images.items():
            lab = self.folder / TEST_LABELS / f"{k}{self.file_ending}"
            out[k] = {"images": v, "label": str(lab) if lab.is_file() else None}
        return out

    def _resolve(self, p: str) -> Path:
        p = os.path.expandvars(p)
        return Path(p) if os.path.isabs(p) else self.folder / p


def validate_dataset_json(dj: object, where: str) -> list[Problem]:
    """Check the keys of a ``dataset.json`` that cps3d and nnU-Net rely on."""
    if not isinstance(dj, dict):
        return [Problem(where, "must hold a JSON object")]
    problems = []
    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        if key not in dj:
            problems.append(Problem(where, f"missing key {key!r}"))
    if problems:
        return problems
    if not isinstance(dj["channel_names"], dict) or not dj["channel_names"]:
        problems.append(Problem(where, "'channel_names' must map channel indices to names, e.g. {\"0\": \"CT\"}"))
    elif sorted(int(k) for k in dj["channel_names"]) != list(range(len(dj["channel_names"]))):
        problems.append(Problem(where, f"'channel_names' keys must be 0..N-1, got {sorted(dj['channel_names'])}"))
    labels = dj["labels"]
    if not isinstance(labels, dict) or not labels:
        problems.append(Problem(where, "'labels' must map names to integer values, e.g. {\"background\": 0}"))
    else:
        try:
            values = _label_values(labels)
        except (TypeError, ValueError):
            problems.append(Problem(where, f"'labels' values must be integers (or lists of integers): {labels}"))
        else:
            if 0 not in values:
                problems.append(Problem(where, "'labels' must declare the background as 0"))
    if not isinstance(dj["file_ending"], str) or not dj["file_ending"].startswith("."):
        problems.append(Problem(where, f"'file_ending' must look like '.nii.gz', got {dj['file_ending']!r}"))
    return problems


def channel_suffix(channel: int) -> str:
    """The XXXX of nnU-Net's channel file names ``CASE_XXXX<ending>``: the channel index in 4 digits."""
    return f"{channel:04d}"


def channel_file_name(case_id: str, channel: int, file_ending: str) -> str:
    """nnU-Net's name of channel ``channel`` of case ``case_id``: ``CASE_XXXX<ending>``."""
    return f"{case_id}_{channel_suffix(channel)}{file_ending}"


def split_channel_name(stem: str) -> tuple[str, int] | None:
    """``(case id, channel index)`` of a file name without its ending named ``CASE_XXXX``; None if it is not."""
    m = _CHANNEL_STEM.fullmatch(stem)
    return None if m is None else (m.group(1), int(m.group(2)))


def channel_mismatch(channels: Iterable[int], num_channels: int) -> tuple[list[int], list[int]]:
    """The channel indices missing from ``channels`` (of 0 .. num_channels - 1) and those beyond them, sorted."""
    found, expected = set(channels), set(range(num_channels))
    return sorted(expected - found), sorted(found - expected)


def _channel_files(folder: Path, file_ending: str) -> tuple[dict[str, dict[int, str]], list[Problem]]:
    """``{case: {channel index: path}}`` of the ``CASE_XXXX<ending>`` files of ``folder``, and misnamed files."""
    cases: dict[str, dict[int, str]] = {}
    problems = []
    if not folder.is_dir():
        return {}, []
    for name in sorted(os.listdir(folder)):
        if name.startswith("."):
            continue
        path = folder / name
        if not name.endswith(file_ending):
            if path.is_file():
                problems.append(Problem(str(path), f"ignored: does not end with the dataset's file_ending {file_ending}"))
            continue
        named = split_channel_name(name[: -len(file_ending)])
        if named is None:
            problems.append(Problem(str(path), f"name must be CASE_XXXX{file_ending} (XXXX = 4-digit channel index)"))
            continue
        cases.setdefault(named[0], {})[named[1]] = str(path)
    return cases, problems


def list_image_cases(folder: Path, file_ending: str, num_channels: int) -> tuple[dict[str, list[str]], list[Problem]]:
    """Group ``CASE_XXXX<ending>`` files of ``folder`` into cases; report misnamed files and missing channels."""
    cases, problems = _channel_files(folder, file_ending)
    complete = {}
    for case, channels in cases.items():
        missing, extra = channel_mismatch(channels, num_channels)
        if missing or extra:
            msg = []
            if missing:
                msg.append("missing channel file(s) " + ", ".join(channel_file_name(case, c, file_ending)
                                                                   for c in missing))
            if extra:
                msg.append(f"channel index(es) {extra} not in channel_names (expected {num_channels} channel(s))")
            problems.append(Problem(str(folder / f"{case}_XXXX{file_ending}"), "; ".join(msg)))
            continue
        complete[case] = [channels[c] for c in range(num_channels)]
    return complete, problems


def check_layout(ds: RawDataset) -> list[Problem]:
    """Folder-level checks: images without labels and vice versa, naming, channel files, numTraining."""
    problems: list[Problem] = []
    if "dataset" in ds.dataset_json:
        for case, v in ds.labeled_cases().items():
            for p in [*v["images"], v["label"]]:
                if not os.path.isfile(p):
                    problems.append(Problem(p, f"listed for case {case} in dataset.json but not found"))
        return problems
    img_dir, lab_dir = ds.folder / LABELED_IMAGES, ds.folder / LABELS
    if not img_dir.is_dir():
        return [Problem(str(img_dir), "folder not found: labeled images go here as "
                        + channel_file_name("CASE", 0, ds.file_ending))]
    images, p = list_image_cases(img_dir, ds.file_ending, ds.num_channels)
    problems += p
    if not images and not p:
        problems.append(Problem(str(img_dir), f"no images ending in {ds.file_ending}"))
    labels = set()
    if not lab_dir.is_dir():
        problems.append(Problem(str(lab_dir), "folder not found: one label map per labeled case goes here"))
    else:
        for name in sorted(os.listdir(lab_dir)):
            if name.startswith("."):
                continue
            if not name.endswith(ds.file_ending):
                if (lab_dir / name).is_file():
                    problems.append(Problem(str(lab_dir / name), f"ignored: does not end with {ds.file_ending}"))
                continue
            labels.add(name[: -len(ds.file_ending)])
    for case in sorted(set(images) - labels):
        if lab_dir.is_dir():
            problems.append(Problem(str(lab_dir / f"{case}{ds.file_ending}"), f"missing: image case {case} has no label"))
    named = set(_channel_files(img_dir, ds.file_ending)[0])  # cases with a channel problem have images too
    for case in sorted(labels - named):
        problems.append(Problem(str(lab_dir / f"{case}{ds.file_ending}"),
                                f"label without image: expected {img_dir / channel_file_name(case, 0, ds.file_ending)}"))
    if ds.dataset_json.get("numTraining") != len(images) and not p:
        problems.append(Problem(str(ds.folder / "dataset.json"),
                                f"numTraining is {ds.dataset_json.get('numTraining')} but {len(images)} training "
                                f"image case(s) were found in {LABELED_IMAGES}/"))
    for sub in (UNLABELED_IMAGES, TEST_IMAGES):
        problems += list_image_cases(ds.folder / sub, ds.file_ending, ds.num_channels)[1]
    return problems


def _info(path: str, problems: list[Problem]) -> ImageInfo | None:
    """The header of ``path``, or None with the problem recorded."""
    try:
        return read_image_info(path)
    except FileNotFoundError:
        problems.append(Problem(path, "file not found"))
    except ImageFileError as e:
        problems.append(Problem(e.path, e.problem))
    return None


def _voxels(path: str, problems: list[Problem]) -> np.ndarray | None:
    """Every voxel of ``path`` after the checks of :func:`cps3d.images.read_image_checked` (truncation, NaN/inf,
    one component), or None with the problem recorded."""
    try:
        return read_image_checked(path)[1]
    except FileNotFoundError:
        problems.append(Problem(path, "file not found"))
    except ImageFileError as e:
        problems.append(Problem(e.path, e.problem))
    return None


def check_case(images: list[str], label: str | None, allowed_labels: set[int] | None,
               dimension: int | None = None) -> list[Problem]:
    """Read one case and report every problem: missing, empty, unreadable or truncated files, multi-component
    files, NaN/inf voxels, images whose number of dimensions is not ``dimension`` (the dataset's, when given),
    geometry that differs between channels or between image and label, label values not declared in
    ``dataset.json``."""
    return _check_case(images, label, allowed_labels, dimension)[0]


def _check_case(images: list[str], label: str | None, allowed_labels: set[int] | None,
                dimension: int | None) -> tuple[list[Problem], list[int | None]]:
    """:func:`check_case`, and the number of dimensions of each image (None: header unreadable)."""
    problems: list[Problem] = []
    dims: list[int | None] = []
    reference: Grid | None = None
    for path in images:
        header = _info(path, problems)
        dims.append(None if header is None else header.dimension)
        if header is None:
            continue
        if header.dimension not in (2, 3):
            problems.append(Problem(path, f"is {header.dimension}-D; only 2-D and 3-D images are supported"))
            continue
        if dimension is not None and header.dimension != dimension:
            problems.append(Problem(path, f"is a {header.dimension}-D image (size {header.size}) but the dataset's "
                                          f"images are {dimension}-D"))
            continue
        if _voxels(path, problems) is None:
            continue
        geom = header.grid
        if reference is None:
            reference = geom
        else:
            for d in reference.differences(geom):
                problems.append(Problem(path, f"geometry differs from channel 0 ({images[0]}): {d}"))
    if label is None:
        return problems, dims
    header = _info(label, problems)
    if header is None:
        return problems, dims
    if header.components != 1:
        problems.append(Problem(label, "label map must have one component per voxel"))
        return problems, dims
    if reference is not None:
        for d in reference.differences(header.grid):
            problems.append(Problem(label, f"geometry differs from its image ({images[0]}): {d}"))
    arr = _voxels(label, problems)
    if arr is None:
        return problems, dims
    if np.issubdtype(arr.dtype, np.floating) and not np.all(arr == np.round(arr)):
        problems.append(Problem(label, "label map contains non-integer values"))
        return problems, dims
    values = set(np.unique(arr).astype(np.int64).tolist())
    if allowed_labels is not None and not values <= allowed_labels:
        problems.append(Problem(label, f"label value(s) {sorted(values - allowed_labels)} are not declared in "
                                       f"dataset.json (declared: {sorted(allowed_labels)})"))
    return problems, dims


def check_dataset(ds: RawDataset, num_processes: int = 1, progress: bool = True, unlabeled: bool = True,
                  test: bool = True) -> list[Problem]:
    """Run every check on a raw dataset and return all problems found (empty list: the dataset is usable).

    Labeled cases: image/label pairing, readability, channel count, geometry agreement, declared label values,
    NaN/inf. Unlabeled (and test) cases: readability, channel count, channel geometry, NaN/inf. Every image must
    have the dataset's number of dimensions: that of most labeled images (nnU-Net cannot mix 2-D and 3-D images).
    """
    problems = check_layout(ds)
    allowed = ds.label_values
    work: list[tuple] = [(v["images"], v["label"], allowed, None) for v in ds.labeled_cases().values()]
    n_labeled = len(work)
    if unlabeled:
        work += [(v, None, None, None) for v in ds.unlabeled_cases().values()]
    if test:
        work += [(v["images"], v["label"], allowed, None) for v in ds.test_cases().values()]
    results: list[tuple[list[Problem], list[int | None]]] = [([], [])] * len(work)
    for i, result in imap_cases(_check_case, work, num_processes, desc=f"Checking {ds.name}", progress=progress):
        if isinstance(result, BaseException):
            raise result
        results[i] = result
    labeled_dims = Counter(d for _, dims in results[:n_labeled] for d in dims if d in (2, 3))
    # ties go to 3-D, the usual case
    dimension = max(labeled_dims, key=lambda d: (labeled_dims[d], d)) if labeled_dims else None
    for (images, *_), (case_problems, dims) in zip(work, results):
        problems += case_problems
        for path, d in zip(images, dims):
            if dimension is not None and d in (2, 3) and d != dimension:
                problems.append(Problem(path, f"is a {d}-D image but the dataset's images are {dimension}-D "
                                              f"({labeled_dims[dimension]} of {sum(labeled_dims.values())} "
                                              "labeled images); nnU-Net cannot mix them"))
    return problems


def _content_key(ds: RawDataset, unlabeled: bool, test: bool) -> str:
    """A hash of every input file's name, size and modification time, and of dataset.json."""
    subs = [LABELED_IMAGES, LABELS] + ([UNLABELED_IMAGES] if unlabeled else []) + ([TEST_IMAGES, TEST_LABELS] if test else [])
    files = [(f"{sub}/{name}", ds.folder / sub / name) for sub in subs if (ds.folder / sub).is_dir()
             for name in sorted(os.listdir(ds.folder / sub))]
    return stat_digest(files, prefix=repr(sorted(ds.dataset_json.items(), key=str)))


CHECK_STAMP = "cps3d_check.json"


def ensure_checked(ds: RawDataset, stamp_folder: str | os.PathLike | None, num_processes: int = 1,
                   progress: bool = True) -> None:
    """Run ``check_dataset`` unless ``stamp_folder`` records a passed check of exactly these files.

    Raises ``DatasetError`` listing every problem. On success writes the stamp, so commands that run after
    ``cps3d check`` (plan, preprocess, train) do not read every scan again.
    """
    key = _content_key(ds, unlabeled=True, test=False)
    stamp = Path(stamp_folder) / CHECK_STAMP if stamp_folder is not None else None
    if stamp is not None and stamp.is_file():
        try:
            if read_json(stamp).get("content_key") == key:
                log.debug("dataset %s unchanged since its last check; skipping the check", ds.name)
                return
        except ValueError:
            pass
    problems = check_dataset(ds, num_processes, progress, unlabeled=True, test=False)
    if problems:
        raise DatasetError(problems)
    if stamp_folder is not None:
        record_passed_check(ds, stamp_folder)


def record_passed_check(ds: RawDataset, stamp_folder: str | os.PathLike) -> None:
    """Remember that the labeled and unlabeled files of ``ds``, as they are now, passed ``check_dataset``."""
    write_json(Path(stamp_folder) / CHECK_STAMP,
               {"dataset": ds.name, "content_key": _content_key(ds, unlabeled=True, test=False)})
