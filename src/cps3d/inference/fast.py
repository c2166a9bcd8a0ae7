"""The fast inference paths: nnU-Net's own torch resampling (``resample_torch_fornnunet``), run on the device the
network runs on, for the export of the logits to the scan's grid and, on the fastest path, for the scan's resampling
to the plan spacing too.

Three resamplings (:data:`RESAMPLINGS`, the one option set of ``PredictConfig.resampling`` and ``--resampling``):

- ``exact``: the plans' resampling functions, nnU-Net's scipy/skimage ones (cubic spline for the image, linear for
  the logits, in float64 on the CPU): label maps identical to stock nnU-Net's;
- ``torch-export`` (the default): the scan resampled exactly as nnU-Net does (its own preprocessing, the plans' cubic
  spline), the export on nnU-Net's torch resampling (:func:`segmentation_torch`);
- ``torch``: as ``torch-export``, and the scan's resampling on torch as well (:class:`DeferredResampling`,
  :func:`resample_to_plan`).

The torch pieces, otherwise nnU-Net's pipeline:

- preprocessing (``torch`` only): nnU-Net's ``DefaultPreprocessor.run_case_npy`` reads, transposes, crops and
  normalises as always, but its resampling is deferred (:class:`DeferredResampling`) and done by
  :func:`resample_to_plan` with linear interpolation in float32 on the network's device; the nonzero mask that
  nnU-Net resamples too (it is used in training only) is not resampled;
- export (``torch`` and ``torch-export``, :func:`segmentation_torch`): the logits are resampled to the scan's grid one
  class at a time with ``resample_torch_fornnunet`` (linear, float32, on the device), keeping a running argmax, so
  that no more than one class is held at full resolution; only the label map (uint8) comes back to the CPU. On CUDA
  the logits stay on the GPU from the sliding window to the export.

Both follow the plans' rule for anisotropic spacing (``force_separate_z`` of the plans, nnU-Net's anisotropy
threshold): in-plane linear, nearest between slices, as nnU-Net's torch resampling does it. The label maps then
differ from stock nnU-Net's at some boundary voxels: the scan's resampling (linear instead of cubic spline) causes
nearly all of the difference, the export very little; ``benchmarks/inference.py`` and ``tests/test_predict.py``
measure by how much.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from nnunetv2.preprocessing.resampling.resample_torch import resample_torch_fornnunet
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from cps3d.options import check_choice

__all__ = ["RESAMPLINGS", "check_resampling", "torch_preprocessing", "torch_export", "DeferredResampling",
           "resample_to_plan", "segmentation_torch"]

# "exact": the plans' resampling functions (identical to stock nnU-Net); "torch-export": the plans' resampling of the
# scan, torch's of the logits; "torch": torch's for both (module docstring)
RESAMPLINGS = ("exact", "torch-export", "torch")


def check_resampling(resampling: str) -> str:
    """``resampling`` if it is one of :data:`RESAMPLINGS`, else a ValueError naming the choices."""
    return check_choice("resampling", resampling, RESAMPLINGS)


def torch_preprocessing(resampling: str) -> bool:
    """Whether ``resampling`` resamples the scan to the plan spacing with torch (else nnU-Net's preprocessing)."""
    return check_resampling(resampling) == "torch"


def torch_export(resampling: str) -> bool:
    """Whether ``resampling`` exports the logits with torch (:func:`segmentation_torch`; else nnU-Net's resampling)."""
    return check_resampling(resampling) in ("torch", "torch-export")


class DeferredResampling(ConfigurationManager):
    """nnU-Net's configuration with its resampling of the image left out, so that ``run_case_npy`` crops and
    normalises as always and the caller resamples afterwards on the network's device (nnU-Net resamples in numpy
    on the CPU inside ``run_case_npy``; it offers no way to stop before the resampling). ``target`` holds the
    arguments nnU-Net would have resampled with: ``(new_shape, current_spacing, new_spacing)``, transposed order.
    The nonzero mask (``resampling_fn_seg``) is passed through unchanged: at inference it is thrown away."""

    def __init__(self, configuration: ConfigurationManager) -> None:
        super().__init__(configuration.configuration)
        self.target: tuple[tuple[int, ...], list[float], list[float]] | None = None

    @property
    def resampling_fn_data(self):
        def record(data, new_shape, current_spacing, new_spacing):
            self.target = (tuple(int(s) for s in new_shape), [float(s) for s in current_spacing],
                           [float(s) for s in new_spacing])
            return data

        return record

    @property
    def resampling_fn_seg(self):
        return lambda seg, new_shape, current_spacing, new_spacing: seg


def _separate_z(configuration: ConfigurationManager, key: str) -> bool | None:
    """The plans' ``force_separate_z`` for one of its resampling functions (None: decided by the anisotropy)."""
    value = configuration.configuration.get(key, {}).get("force_separate_z")
    return None if value is None else bool(value)


def _resample(data: torch.Tensor, shape: Sequence[int], current: Sequence[float], new: Sequence[float],
              force_separate_z: bool | None) -> torch.Tensor:
    # nnU-Net's function sets torch's thread count to its argument for the call: keep the caller's
    return resample_torch_fornnunet(data, [int(s) for s in shape], list(current), list(new), is_seg=False,
                                    num_threads=torch.get_num_threads(), device=data.device,
                                    force_separate_z=force_separate_z)


def resample_to_plan(data: np.ndarray | torch.Tensor, target: tuple, configuration: ConfigurationManager,
                     device: torch.device) -> torch.Tensor:
    """The preprocessed image (channels, *transposed cropped shape) float32, as ``run_case_npy`` left it under a
    :class:`DeferredResampling`, resampled to the plan spacing on ``device``. ``target``: that configuration's
    ``target``. Returns a float32 tensor of shape (channels, *new_shape) on ``device``."""
    shape, current, new = target
    x = (torch.from_numpy(data) if isinstance(data, np.ndarray) else data).to(device=device, dtype=torch.float32)
    with torch.inference_mode():
        return _resample(x, shape, current, new, _separate_z(configuration, "resampling_fn_data_kwargs"))


def segmentation_torch(logits: torch.Tensor, plans_manager, configuration_manager: ConfigurationManager,
                       label_manager, properties: dict) -> np.ndarray:
    """Label map on the scan's grid from network logits, resampled one class at a time on the logits' device.

    ``logits``: (classes, *network-resolution shape) tensor as nnU-Net's sliding window returns it (any float dtype;
    resampled in float32; left unchanged). ``properties``: nnU-Net's properties after
    preprocessing. Returns the label map in the array order of the image as read (uint8, or uint16 for 255 or more
    foreground labels). Softmax models: argmax of the resampled logits (first class on ties, as nnU-Net's argmax);
    region models: each region where its sigmoid exceeds 0.5, in ``regions_class_order``.
    """
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    from cps3d.inference.export import export_spacings

    n = label_manager.num_segmentation_heads
    if logits.ndim < 3 or logits.shape[0] != n:
        raise ValueError(f"logits of shape {tuple(logits.shape)}: expected ({n}, ...)")
    current, original = export_spacings(properties, plans_manager, configuration_manager)
    target_shape = [int(s) for s in properties["shape_after_cropping_and_before_resampling"]]
    separate_z = _separate_z(configuration_manager, "resampling_fn_probabilities_kwargs")
    torch_dtype, np_dtype = (torch.uint8, np.uint8) if len(label_manager.foreground_labels) < 255 else \
        (torch.int32, np.uint16)
    with torch.inference_mode():
        seg = torch.zeros(target_shape, dtype=torch_dtype, device=logits.device)
        best = None
        for c in range(n):
            channel = _resample(logits[c:c + 1].float(), target_shape, current, original, separate_z)[0]
            if label_manager.has_regions:
                seg[torch.sigmoid(channel) > 0.5] = int(label_manager.regions_class_order[c])
            elif best is None:
                best = channel.clone() if channel.data_ptr() == logits.data_ptr() else channel
            else:
                better = channel > best
                best[better] = channel[better]
                seg[better] = c
                del better
            del channel
        del best
        seg_np = seg.cpu().numpy().astype(np_dtype, copy=False)
    del seg
    full = np.zeros(properties["shape_before_cropping"], dtype=np_dtype)
    full = insert_crop_into_image(full, seg_np, properties["bbox_used_for_cropping"])
    return np.ascontiguousarray(full.transpose(plans_manager.transpose_backward))
