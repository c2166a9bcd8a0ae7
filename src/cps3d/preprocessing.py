"""Preprocessing of labeled and unlabeled cases with nnU-Net's preprocessor.

Labeled cases go to ``<preprocessed>/<dataset>/<data_identifier>/`` exactly as nnU-Net stores them, so nnU-Net's
dataset classes, data loaders and cross-validation splits work unchanged. Unlabeled cases are preprocessed the same way
(transpose, crop to nonzero, normalise with the plans' intensity statistics, resample) without a segmentation and go
to ``<data_identifier>_unlabeled/``: they can never enter a split. Their ``_seg`` file holds only nnU-Net's
outside-the-nonzero-region marker (-1) so that nnU-Net's loaders and augmentation accept them as they are.

Resumable and safe to kill: each case is written into a hidden temporary folder and then moved into place file by
file, the data file (which is what marks a case as present for nnU-Net) last. Re-running skips finished cases. A
``<folder>.cps3d.json`` stamp beside each folder records which plans configuration produced it (beside, not inside:
nnU-Net infers the storage format from the file endings inside); if the plans change, the folder's cases are redone.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cps3d.dataset import RawDataset
from cps3d.files import copy_atomic, json_digest, read_json, write_json
from cps3d.images import verify_image
from cps3d.parallel import imap_cases

log = logging.getLogger(__name__)

UNLABELED_SUFFIX = "_unlabeled"
STAMP_SUFFIX = ".cps3d.json"
_PARTIAL_PREFIX = ".partial_"


def unlabeled_folder(labeled_folder: str | os.PathLike) -> Path:
    """Where the unlabeled cases of a preprocessed configuration live, given its labeled folder."""
    p = Path(labeled_folder)
    return p.parent / (p.name + UNLABELED_SUFFIX)


def _plans_key(plans: dict, configuration: str) -> str:
    """Hash of everything in the plans that changes the preprocessed data of ``configuration``."""
    c = dict(plans["configurations"][configuration])
    relevant = {
        "configuration": {k: c.get(k) for k in ("spacing", "normalization_schemes", "use_mask_for_norm",
                                                 "resampling_fn_data", "resampling_fn_seg", "resampling_fn_data_kwargs",
                                                 "resampling_fn_seg_kwargs", "preprocessor_name", "patch_size")},
        "transpose_forward": plans["transpose_forward"],
        "intensity": plans["foreground_intensity_properties_per_channel"],
    }
    return json_digest(relevant)


def is_case_complete(folder: Path, case: str) -> bool:
    return all((folder / f"{case}{ext}").is_file() for ext in (".pkl", "_seg.b2nd", ".b2nd"))


def preprocess_case(out_folder: str, case: str, image_files: list[str], label_file: str | None, plans: dict,
                    configuration: str, dataset_json: dict, verify: bool = True) -> tuple[int, ...]:
    """Preprocess one case with nnU-Net's DefaultPreprocessor and store it atomically; returns the stored shape.

    ``verify``: read every file in full first (:func:`cps3d.images.verify_image`: nnU-Net's reader would take a
    truncated NIfTI's missing voxels and NaN for zeros); False only for files that just passed ``check_dataset``.
    Raises RuntimeError naming the case and the file."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if verify:
        for f in [*image_files, *([label_file] if label_file is not None else [])]:
            try:
                verify_image(f)
            except (FileNotFoundError, ValueError) as e:
                raise RuntimeError(f"case {case}: {e}") from e
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    try:
        data, seg, props = DefaultPreprocessor(verbose=False).run_case(image_files, label_file, pm, cm, dataset_json)
    except Exception as e:
        raise RuntimeError(f"case {case} ({image_files[0]}): preprocessing failed: {e}") from e
    if label_file is None:
        # no segmentation: nothing to oversample; the data loader only reads this key
        props["class_locations"] = {}
    data = data.astype(np.float32, copy=False)
    seg = seg.astype(np.int16, copy=False)
    patch = tuple(cm.patch_size)
    blocks, chunks = comp_blosc2_params(data.shape, patch, data.itemsize)
    blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch, seg.itemsize)
    out = Path(out_folder)
    partial = out / f"{_PARTIAL_PREFIX}{case}_{os.getpid()}"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        nnUNetDatasetBlosc2.save_case(data, seg, props, str(partial / case), chunks=chunks, blocks=blocks,
                                      chunks_seg=chunks_seg, blocks_seg=blocks_seg)
        # the data file last: nnU-Net lists cases by their data file
        for ext in ("_seg.b2nd", ".pkl", ".b2nd"):
            os.replace(partial / f"{case}{ext}", out / f"{case}{ext}")
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return tuple(int(i) for i in data.shape)


@dataclass(frozen=True)
class PreprocessSummary:
    labeled_folder: Path
    unlabeled_folder: Path
    done: int
    skipped: int
    failed: list[str]


def _prepare_folder(folder: Path, key: str, dataset_name: str, configuration: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(f"{_PARTIAL_PREFIX}*"):  # from a run that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    stamp = folder.parent / f"{folder.name}{STAMP_SUFFIX}"
    old = read_json(stamp) if stamp.is_file() else None
    if old is not None and old.get("plans_key") != key:
        log.warning("%s was preprocessed with different plans; redoing its cases", folder)
        for f in folder.iterdir():
            if f.is_file() and f.suffix in (".b2nd", ".pkl", ".npz", ".npy"):
                f.unlink()
    if old is None or old.get("plans_key") != key:
        write_json(stamp, {"dataset": dataset_name, "configuration": configuration, "plans_key": key})


def copy_gt_segmentations(ds: RawDataset, preprocessed_dataset_folder: Path) -> None:
    """Copy labelsTr to ``gt_segmentations/`` (nnU-Net's final validation reads the references there)."""
    target = preprocessed_dataset_folder / "gt_segmentations"
    target.mkdir(parents=True, exist_ok=True)
    for case, v in ds.labeled_cases().items():
        dst = target / f"{case}{ds.file_ending}"
        src = Path(v["label"])
        if dst.is_file() and dst.stat().st_size == src.stat().st_size and dst.stat().st_mtime >= src.stat().st_mtime:
            continue
        copy_atomic(src, dst)


def preprocess(ds: RawDataset, preprocessed_root: str | os.PathLike, plans: dict, configuration: str,
               num_processes: int = 1, progress: bool = True, unlabeled: bool = True,
               verify: bool = True) -> PreprocessSummary:
    """Preprocess the labeled (and unlabeled) cases of ``ds`` for one configuration of ``plans``.

    Cases already complete are skipped. ``verify``: see :func:`preprocess_case`. Raises RuntimeError listing the
    cases that failed (the others are kept).
    """
    if configuration not in plans["configurations"]:
        raise ValueError(f"configuration {configuration!r} is not in the plans (has: {sorted(plans['configurations'])})")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cm = PlansManager(plans).get_configuration(configuration)
    if cm.preprocessor_name != "DefaultPreprocessor":
        raise ValueError(f"plans ask for preprocessor {cm.preprocessor_name!r}; cps3d supports DefaultPreprocessor")
    base = Path(preprocessed_root) / ds.name
    dataset_json = ds.dataset_json
    write_json(base / "dataset.json", dataset_json)
    copy_gt_segmentations(ds, base)
    lab_folder = base / cm.data_identifier
    unl_folder = unlabeled_folder(lab_folder)
    key = _plans_key(plans, configuration)
    work = []
    skipped = 0
    _prepare_folder(lab_folder, key, ds.name, configuration)
    for case, v in ds.labeled_cases().items():
        if is_case_complete(lab_folder, case):
            skipped += 1
        else:
            work.append((str(lab_folder), case, v["images"], v["label"], plans, configuration, dataset_json,
                         verify))
    if unlabeled:
        _prepare_folder(unl_folder, key, ds.name, configuration)
        for case, images in ds.unlabeled_cases().items():
            if is_case_complete(unl_folder, case):
                skipped += 1
            else:
                work.append((str(unl_folder), case, images, None, plans, configuration, dataset_json, verify))
    if skipped:
        log.info("%d case(s) already preprocessed, skipped", skipped)
    failed = []
    for i, result in imap_cases(preprocess_case, work, num_processes, desc=f"Preprocessing {configuration}",
                                progress=progress, max_pending=num_processes + 1):
        if isinstance(result, BaseException):
            log.error("%s", result)
            failed.append(work[i][1])
    summary = PreprocessSummary(lab_folder, unl_folder, len(work) - len(failed), skipped, failed)
    if failed:
        raise RuntimeError(f"preprocessing failed for {len(failed)} case(s): {', '.join(failed)} "
                           "(the other cases are stored; fix these and run again to resume)")
    return summary
