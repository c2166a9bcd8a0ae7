"""From network output at the plan's resolution to files on the scan's original grid.

Two paths:

- ``low_memory`` (default when probabilities are not saved): the logits are resampled to the original resolution one
  class at a time with nnU-Net's own resampling function, keeping a running argmax (best value + class index). Peak
  memory is about one full-resolution channel, the best-value array and the index array, instead of all classes at
  once. nnU-Net resamples every channel independently and takes the argmax of the logits (first index on ties), and
  we take the same per-channel resampling and a strict ">" comparison, so the label map is identical to nnU-Net's
  (``convert_predicted_logits_to_segmentation_with_correct_shape``) - tests check this. Region-based models get the
  same treatment (each region's sigmoid > 0.5, assigned in ``regions_class_order``).
  We chose this over nnU-Net v1's "fastest" mode (argmax at low resolution, then resampling the label map), which
  needs even less memory but changes the result (label boundaries are interpolated from one-hot maps instead of from
  the network's scores).
- ``nnunet``: nnU-Net's export of all classes at once; always used with ``save_probabilities`` (probabilities are
  needed for all classes anyway), which writes nnU-Net's ``CASE.npz`` (``probabilities``, class x array order of the
  written image) and ``CASE.pkl`` (the properties).

Every file is written atomically; the label map is written last, so a case whose label map exists is complete.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from cps3d.files import atomic_path
from cps3d.inference.postprocessing import Postprocessing

log = logging.getLogger(__name__)

__all__ = ["EXPORT_MODES", "ExportJob", "export_spacings", "segmentation_low_memory", "export_case",
           "output_paths"]

EXPORT_MODES = ("low_memory", "nnunet")


def export_spacings(properties: dict, plans_manager, configuration_manager) -> tuple[list[float], list[float]]:
    """(spacing of the network output, spacing of the cropped original) in the transposed order, as nnU-Net's export
    computes them (for 2D configurations the first axis keeps the scan's spacing)."""
    original = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    current = list(configuration_manager.spacing)
    if len(current) != len(properties["shape_after_cropping_and_before_resampling"]):
        current = [original[0], *current]
    return current, original


def segmentation_low_memory(logits, plans_manager, configuration_manager, label_manager,
                            properties: dict) -> np.ndarray:
    """Label map on the original grid from network logits, one class at a time (module docstring).

    ``logits``: (classes, *network-resolution shape) numpy array or torch tensor, as nnU-Net's sliding window
    returns it (transposed, cropped, resampled space). ``properties``: nnU-Net's properties of the case after
    preprocessing (``shape_after_cropping_and_before_resampling``, ``bbox_used_for_cropping``,
    ``shape_before_cropping``, ``spacing``). Returns the label map in the array order of the image as read
    (uint8, or uint16 for 255 or more foreground labels).
    """
    import torch
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    if isinstance(logits, torch.Tensor):
        logits = logits.cpu().numpy()
    if logits.ndim < 3 or logits.shape[0] != label_manager.num_segmentation_heads:
        raise ValueError(f"logits of shape {logits.shape}: expected ({label_manager.num_segmentation_heads}, ...)")
    current, original = export_spacings(properties, plans_manager, configuration_manager)
    target_shape = properties["shape_after_cropping_and_before_resampling"]
    dtype = np.uint8 if len(label_manager.foreground_labels) < 255 else np.uint16
    seg = np.zeros(target_shape, dtype=dtype)
    best = None
    for c in range(logits.shape[0]):
        channel = configuration_manager.resampling_fn_probabilities(logits[c:c + 1], target_shape, current,
                                                                    original)
        if isinstance(channel, torch.Tensor):
            channel = channel.cpu().numpy()
        channel = channel[0]
        if np.shares_memory(channel, logits):  # no resampling needed: nnU-Net returns its input; keep ours intact
            channel = channel.copy()
        if label_manager.has_regions:
            mask = label_manager.apply_inference_nonlin(channel[None])[0].numpy() > 0.5
            seg[mask] = label_manager.regions_class_order[c]
        elif best is None:
            best = channel  # class 0 wins until beaten; seg is already 0
        else:
            better = channel > best
            best[better] = channel[better]
            seg[better] = c
        del channel
    del best
    full = np.zeros(properties["shape_before_cropping"], dtype=dtype)
    full = insert_crop_into_image(full, seg, properties["bbox_used_for_cropping"])
    return np.ascontiguousarray(full.transpose(plans_manager.transpose_backward))


def output_paths(output_dir: str | os.PathLike, case_id: str, ending: str) -> dict[str, Path]:
    """Files written for one case: ``seg`` (label map), ``npz`` and ``pkl`` (probabilities, when saved)."""
    out = Path(output_dir)
    return {"seg": out / f"{case_id}{ending}", "npz": out / f"{case_id}.npz", "pkl": out / f"{case_id}.pkl"}


@dataclass
class ExportJob:
    """Everything a worker process needs to export one case (picklable). ``writer``: ``plans`` (the reader/writer
    class of the plans) or ``sitk`` (nnU-Net's SimpleITKIO: DICOM input, written as NIfTI). ``original_spacing``:
    with forced spacing, the scan's own spacing (array order): ``properties['spacing']`` then holds the assumed one,
    which the resampling back to the scan's grid needs, but ``CASE.pkl`` must describe the written grid.
    ``label_map``: the label map on the scan's grid when it was already made (the fast path resamples on the
    network's device, :func:`cps3d.inference.fast.segmentation_torch`); ``logits`` is then None and
    ``seconds_before`` the time that took, counted in the export time."""

    case_id: str
    logits: Any = field(repr=False)
    properties: dict = field(repr=False)
    plans: dict = field(repr=False)
    configuration: str
    dataset_json: dict = field(repr=False)
    output_dir: str
    ending: str
    writer: str = "plans"
    save_probabilities: bool = False
    export_mode: str = "low_memory"
    postprocessing: Postprocessing = field(default_factory=lambda: Postprocessing("none"))
    original_spacing: list[float] | None = None
    label_map: Any = field(default=None, repr=False)
    seconds_before: float = 0.0


def _writer(job: ExportJob, plans_manager):
    if job.writer == "sitk":
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

        return SimpleITKIO()
    return plans_manager.image_reader_writer_class()


class ExportResult(TypedDict):
    """What :func:`export_case` returns: the files written, the seconds taken, the labels in the label map."""

    case_id: str
    files: list[str]
    export_seconds: float
    labels: list[int]


def export_case(job: ExportJob) -> ExportResult:
    """Resample, post-process and write one case (module docstring) and return an :class:`ExportResult`. Runs in
    worker processes: everything it needs is in ``job``."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    t0 = time.perf_counter()
    pm = PlansManager(job.plans)
    cm = pm.get_configuration(job.configuration)
    lm = pm.get_label_manager(job.dataset_json)
    paths = output_paths(job.output_dir, job.case_id, job.ending)
    written = []
    if job.label_map is not None:
        seg = job.label_map
        job.label_map = None
    elif job.save_probabilities or job.export_mode == "nnunet":
        result = convert_predicted_logits_to_segmentation_with_correct_shape(
            job.logits, pm, cm, lm, job.properties, return_probabilities=job.save_probabilities)
        job.logits = None
        if job.save_probabilities:
            seg, probabilities = result
            with atomic_path(paths["npz"]) as tmp:
                np.savez_compressed(tmp, probabilities=probabilities)
            del probabilities
            properties = job.properties
            if job.original_spacing is not None:  # the probabilities lie on the scan's grid, not the assumed one
                properties = {**properties, "spacing": list(job.original_spacing),
                              "cps3d_assumed_spacing": list(properties["spacing"])}
            with atomic_path(paths["pkl"]) as tmp, open(tmp, "wb") as f:
                pickle.dump(properties, f)
            written += [str(paths["npz"]), str(paths["pkl"])]
        else:
            seg = result
        del result
    else:
        seg = segmentation_low_memory(job.logits, pm, cm, lm, job.properties)
        job.logits = None
    seg = job.postprocessing.apply(seg)
    with atomic_path(paths["seg"]) as tmp:
        _writer(job, pm).write_seg(seg, tmp, job.properties)
    written.append(str(paths["seg"]))
    labels = [int(v) for v in np.flatnonzero(np.bincount(seg.ravel()))] if seg.size else []
    return {"case_id": job.case_id, "files": written, "export_seconds": time.perf_counter() - t0 + job.seconds_before,
            "labels": labels}
