"""Writing a complete nnU-Net raw dataset of phantoms (labeled, unlabeled and test cases).

Layout of ``OUT_DIR/DatasetNNN_NAME``::

    dataset.json                 nnU-Net's keys (written by nnU-Net's generate_dataset_json) + a "cps3d_phantoms" entry
    imagesTr/CASE_0000.nii.gz    labelsTr/CASE.nii.gz          labeled cases   labeled_000, labeled_001, ...
    imagesUnlabeled/CASE_0000.nii.gz                           unlabeled cases unlabeled_000, ...
    imagesTs/CASE_0000.nii.gz    labelsTs/CASE.nii.gz          test cases      test_000, ...
    phantom_params/CASE.json     the sampled parameters of every case (render_case(params) re-creates it)

Each split draws its cases from its own random stream (``SeedSequence([seed, split, index])``), so adding unlabeled
or test cases never changes the labeled ones, and case i is the same whatever the number of processes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from cps3d.dataset import channel_file_name
from cps3d.evaluation.organs import FLARE_LABELS
from cps3d.files import atomic_path, read_json, write_json
from cps3d.parallel import imap_cases
from cps3d.phantoms.params import PARAMS_VERSION, CaseParams
from cps3d.phantoms.render import Geometry, render_case
from cps3d.phantoms.sampling import check_size, sample_case

log = logging.getLogger(__name__)

DEFAULT_DATASET_ID = 900  # free in nnU-Net's numbering (its own test datasets use 987-999)
DEFAULT_NAME = "Phantoms"
PARAMS_FOLDER = "phantom_params"
FILE_ENDING = ".nii.gz"
#: Random stream of each split, and its case-id prefix.
SPLITS = {"labeled": 0, "unlabeled": 1, "test": 2}
#: Folders a phantom dataset writes into (image folder, label folder or None).
SPLIT_FOLDERS = {"labeled": ("imagesTr", "labelsTr"), "unlabeled": ("imagesUnlabeled", None),
                 "test": ("imagesTs", "labelsTs")}
_NAME = re.compile(r"[A-Za-z0-9_\-]+")


def case_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of case ``index`` of ``split`` (``labeled``/``unlabeled``/``test``) for a dataset seed."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS[split], int(index)]))


def case_ids(split: str, n: int) -> list[str]:
    """Case identifiers of a split: ``labeled_000``, ``labeled_001``, ... (at least three digits)."""
    width = max(3, len(str(max(n - 1, 0))))
    return [f"{split}_{i:0{width}d}" for i in range(n)]


def _count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def load_case_params(path: str | os.PathLike) -> CaseParams:
    """Read a ``phantom_params/CASE.json`` file; errors name the file."""
    data = read_json(path)
    try:
        return CaseParams.from_dict(data)
    except ValueError as e:
        raise ValueError(f"{path}: not valid phantom parameters: {e}") from e


def write_case_files(folder: str | os.PathLike, case_id: str, split: str, params: CaseParams | dict,
                     compression_level: int = 1) -> dict[str, float]:
    """Render one case and write its image (and label, except for unlabeled cases) and parameters atomically.

    Returns timings in seconds: ``render``, ``write``. Errors are re-raised naming the case.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    try:
        p = params if isinstance(params, CaseParams) else CaseParams.from_dict(params)
        t0 = time.perf_counter()
        image, label, geometry = render_case(p)
        t1 = time.perf_counter()
        images_dir, labels_dir = SPLIT_FOLDERS[split]
        _write_nifti(sitk, geometry, image, folder / images_dir / channel_file_name(case_id, 0, FILE_ENDING), compression_level)
        if labels_dir is not None:
            _write_nifti(sitk, geometry, label, folder / labels_dir / f"{case_id}{FILE_ENDING}", compression_level)
        write_json(folder / PARAMS_FOLDER / f"{case_id}.json", p.to_dict())
        t2 = time.perf_counter()
    except Exception as e:
        raise RuntimeError(f"phantom case {case_id} ({split}): {type(e).__name__}: {e}") from e
    return {"render": t1 - t0, "write": t2 - t1}


def _write_nifti(sitk, geometry: Geometry, array: np.ndarray, path: Path, compression_level: int) -> None:
    img = geometry.to_sitk(array)
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, tmp, True, compression_level)


def _planned_files(counts: dict[str, int]) -> dict[str, set[str]]:
    planned: dict[str, set[str]] = {PARAMS_FOLDER: set()}
    for split, n in counts.items():
        images_dir, labels_dir = SPLIT_FOLDERS[split]
        ids = case_ids(split, n)
        planned.setdefault(images_dir, set()).update(channel_file_name(c, 0, FILE_ENDING) for c in ids)
        if labels_dir:
            planned.setdefault(labels_dir, set()).update(f"{c}{FILE_ENDING}" for c in ids)
        planned[PARAMS_FOLDER].update(f"{c}.json" for c in ids)
    for images_dir, labels_dir in SPLIT_FOLDERS.values():
        planned.setdefault(images_dir, set())
        if labels_dir:
            planned.setdefault(labels_dir, set())
    return planned


def _check_target(out_dir: Path, folder: Path, dataset_id: int, planned: dict[str, set[str]], overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir():
        prefix = f"Dataset{dataset_id:03d}_"
        clash = sorted(d for d in os.listdir(out_dir)
                       if d.startswith(prefix) and d != folder.name and (out_dir / d).is_dir())
        if clash:
            raise FileExistsError(f"{out_dir} already holds {', '.join(clash)} with dataset id {dataset_id}: a second "
                                  f"dataset with that id would make '-d {dataset_id}' ambiguous; choose another id")
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder}: exists and is not a folder")
    if not folder.is_dir() or not any(n for n in os.listdir(folder) if not n.startswith(".")):
        return
    if not overwrite:
        raise FileExistsError(f"{folder}: dataset folder exists and is not empty; pass overwrite=True (--overwrite) "
                              "to replace the phantom files in it (other files are never deleted)")
    # Overwriting must not leave cases of another dataset behind: they would silently join this one.
    foreign = []
    for sub, names in planned.items():
        d = folder / sub
        if d.is_dir():
            foreign += [str(d / n) for n in sorted(os.listdir(d)) if not n.startswith(".") and n not in names]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise FileExistsError(f"{folder}: --overwrite would leave {len(foreign)} file(s) that are not part of the new "
                              f"dataset in its case folders ({shown}); remove them or choose another folder")


def write_dataset(out_dir: str | os.PathLike, labeled: int, unlabeled: int, test: int, seed: int = 0,
                  size: str = "small", dataset_id: int = DEFAULT_DATASET_ID, name: str = DEFAULT_NAME,
                  num_processes: int = 1, progress: bool = True, overwrite: bool = False,
                  compression_level: int = 1) -> Path:
    """Write a complete nnU-Net raw dataset of phantoms into ``out_dir/DatasetNNN_NAME`` and return that folder.

    ``labeled`` (>= 1), ``unlabeled`` and ``test`` (>= 0) cases; ``seed`` (>= 0) makes the dataset reproducible;
    ``size``: small | medium | full (see ``SIZE_SPECS``). An existing non-empty dataset folder is refused unless
    ``overwrite``, which replaces phantom files of the same names and never deletes anything; it is refused too if
    files that are not part of the new dataset sit in its case folders. ``compression_level`` (1-9) is the gzip
    level of the NIfTI files (1: fastest). Files are written atomically; dataset.json last.
    """
    counts = {"labeled": _count("labeled", labeled, 1), "unlabeled": _count("unlabeled", unlabeled, 0),
              "test": _count("test", test, 0)}
    seed = _count("seed", seed, 0)
    check_size(size)
    dataset_id = _count("dataset_id", dataset_id, 1)
    if dataset_id > 999:
        raise ValueError(f"dataset_id must be 1..999 (three digits in DatasetNNN_Name), got {dataset_id}")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"name must be letters, digits, '_' or '-' (it becomes Dataset{dataset_id:03d}_NAME), "
                         f"got {name!r}")
    num_processes = _count("num_processes", num_processes, 1)
    if not 1 <= int(compression_level) <= 9:
        raise ValueError(f"compression_level must be 1..9, got {compression_level!r}")
    out_dir = Path(out_dir).expanduser().resolve()
    folder = out_dir / f"Dataset{dataset_id:03d}_{name}"
    _check_target(out_dir, folder, dataset_id, _planned_files(counts), overwrite)

    work = []
    for split, n in counts.items():
        for index, case_id in enumerate(case_ids(split, n)):
            params = sample_case(case_rng(seed, split, index), size)
            work.append((str(folder), case_id, split, params.to_dict(), int(compression_level)))
    for images_dir, labels_dir in (SPLIT_FOLDERS[s] for s, n in counts.items() if n):
        (folder / images_dir).mkdir(parents=True, exist_ok=True)
        if labels_dir:
            (folder / labels_dir).mkdir(parents=True, exist_ok=True)
    (folder / PARAMS_FOLDER).mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    render_s = write_s = 0.0
    for _, result in imap_cases(write_case_files, work, num_processes, desc=f"Phantoms ({size})", progress=progress):
        if isinstance(result, BaseException):
            raise result
        render_s += result["render"]
        write_s += result["write"]
    _write_dataset_json(folder, counts, seed, size)
    log.info("wrote %s: %d labeled, %d unlabeled, %d test %s phantom(s) in %.1f s (render %.1f s, write %.1f s)",
             folder, counts["labeled"], counts["unlabeled"], counts["test"], size, time.perf_counter() - t0,
             render_s, write_s)
    return folder


def _write_dataset_json(folder: Path, counts: dict[str, int], seed: int, size: str) -> None:
    """dataset.json through nnU-Net's own generator (into a temporary folder), then moved into place atomically."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    tmpdir = tempfile.mkdtemp(prefix=".dataset_json.", dir=folder)
    try:
        generate_dataset_json(
            tmpdir, channel_names={"0": "CT"}, labels=dict(FLARE_LABELS), num_training_cases=counts["labeled"],
            file_ending=FILE_ENDING, dataset_name=folder.name,
            description="Synthetic abdominal CT phantoms (portal-venous phase HU) with FLARE 2022 organ labels, "
                        "generated by cps3d phantoms",
            reference="synthetic (cps3d.phantoms)", license="CC0-1.0 (synthetic data)", converted_by="cps3d phantoms",
            numUnlabeled=counts["unlabeled"], numTest=counts["test"],
            cps3d_phantoms={"seed": seed, "size": size, "params_version": PARAMS_VERSION,
                            "params_folder": PARAMS_FOLDER})
        os.replace(os.path.join(tmpdir, "dataset.json"), folder / "dataset.json")
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
