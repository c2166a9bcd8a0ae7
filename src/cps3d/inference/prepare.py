"""Reading and preprocessing one case for the network (runs in worker processes): the checked read of every
channel file or DICOM series, forced spacing when asked, and nnU-Net's ``DefaultPreprocessor``."""

from __future__ import annotations

import contextlib
import io
import math
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from cps3d.images import error_text, verify_image
from cps3d.inference.fast import DeferredResampling, torch_preprocessing
from cps3d.inference.forced_spacing import ForcedSpacing, force_spacing_on_properties
from cps3d.inference.inputs import Case, read_dicom_series

if TYPE_CHECKING:  # typing.NotRequired is Python 3.11's; the annotations are not evaluated at run time
    from typing import NotRequired

__all__ = ["prepare_case", "input_dimension", "first_line"]


def first_line(e: BaseException) -> str:
    """The exception's type and the informative line of its message (see :func:`cps3d.images.error_text`)."""
    text = error_text(e)
    return type(e).__name__ if text == type(e).__name__ else f"{type(e).__name__}: {text}"


def input_dimension(plans: dict) -> int:
    """Number of dimensions of the images a model was trained on: 2 when nnU-Net's readers marked the dataset's
    images as 2-D (they give the missing axis a spacing of 999), else 3."""
    return 2 if 999 in [float(s) for s in plans.get("original_median_spacing_after_transp", ())] else 3


class CaseInfo(TypedDict):
    """A prepared case's geometry for logs and the report: ``shape`` and ``spacing`` (mm) in index order (x, y, z),
    ``assumed_spacing`` under forced spacing (else None) with the scan's ``n_slices``, and the shape the network
    sees (array order) with its voxel count."""

    shape: list[int]
    spacing: list[float]
    assumed_spacing: list[float] | None
    n_slices: NotRequired[int]
    network_shape: list[int]
    network_voxels: int


class PreparedCase(TypedDict):
    """What :func:`prepare_case` returns: ``data`` (channels, *network-order shape) float32 (the caller may pop it
    to free it early), nnU-Net's ``properties``, the ``info`` for logs, and on the fast path ``resample_target``
    (what :func:`cps3d.inference.fast.resample_to_plan` needs)."""

    data: NotRequired[np.ndarray]
    properties: dict[str, Any]
    info: CaseInfo
    resample_target: NotRequired[Any]


def prepare_case(case: Case, plans: dict, configuration: str, dataset_json: dict,
                 forced_spacing: ForcedSpacing | None, resampling: str = "exact") -> PreparedCase:
    """Read and preprocess one case (runs in worker processes) into a :class:`PreparedCase`.
    Raises ValueError naming the input when it cannot be read or used: every channel file is first read in full by
    :func:`cps3d.images.verify_image` (nnU-Net's SimpleITK reader turns a truncated NIfTI's missing voxels and NaN
    into zeros without a word), which names an empty, truncated or corrupt file, NaN or infinite voxels and an
    image of another dimensionality than the model's.
    ``resampling="torch"`` (the fastest path, :mod:`cps3d.inference.fast`): the image is left at its own resolution
    (cropped and normalised) and ``"resample_target"`` holds what :func:`cps3d.inference.fast.resample_to_plan`
    needs to resample it on the network's device; ``exact`` and ``torch-export`` preprocess as nnU-Net does."""
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    if torch_preprocessing(resampling):  # also checks the value
        cm = DeferredResampling(cm)
    n_channels = len(dataset_json["channel_names"])
    if case.kind != "dicom":
        dimension = input_dimension(plans)
        for f in case.files:
            try:
                verify_image(f, dimension)
            except FileNotFoundError as e:
                raise ValueError(str(e)) from e
    said = io.StringIO()
    if case.kind == "dicom":
        data, properties = read_dicom_series(case)  # its errors name the series and what is wrong
    else:
        try:
            with contextlib.redirect_stdout(said):
                data, properties = pm.image_reader_writer_class().read_images(list(case.files))
        except Exception as e:
            extra = " ".join(said.getvalue().split())
            raise ValueError(f"{case.source}: cannot read ({first_line(e)}{'; ' + extra if extra else ''})") from e
    if data.ndim != 4 or data.shape[0] != n_channels:
        raise ValueError(f"{case.source}: read {data.shape[0] if data.ndim == 4 else '?'} channel(s) of shape "
                         f"{data.shape}, the model expects {n_channels} channel(s) of a 3D image")
    if not math.isfinite(float(np.sum(data, dtype=np.float64))):  # NaN/inf anywhere; no full-size mask
        raise ValueError(f"{case.source}: holds NaN or infinite values")
    index_shape = [int(s) for s in data.shape[1:][::-1]]
    index_spacing = [float(s) for s in properties["spacing"][::-1]]
    assumed_spacing: list[float] | None = None
    n_slices: int | None = None
    if forced_spacing is not None:
        try:
            forced = force_spacing_on_properties(properties, data.shape[1:], forced_spacing)
        except ValueError as e:
            raise ValueError(f"{case.source}: {e}") from e
        assumed_spacing = [float(s) for s in forced["assumed_spacing"][::-1]]
        n_slices = forced["n_slices"]
    # hand the image over without keeping a reference here: nnU-Net's first step copies it (astype), and the
    # original can then be freed before the resampling, which is the peak of the whole prediction
    holder = [data]
    del data
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            data, _, properties = DefaultPreprocessor(verbose=False).run_case_npy(holder.pop(), None, properties, pm,
                                                                                  cm, dataset_json)
    except Exception as e:
        raise ValueError(f"{case.source}: preprocessing failed ({first_line(e)})") from e
    shape = data.shape[1:]
    if isinstance(cm, DeferredResampling):
        if cm.target is None:
            raise ValueError(f"{case.source}: nnU-Net's preprocessing did not ask for a resampling")
        shape = cm.target[0]
    info: CaseInfo = {"shape": index_shape, "spacing": index_spacing, "assumed_spacing": assumed_spacing,
                      "network_shape": [int(s) for s in shape], "network_voxels": int(np.prod(shape))}
    if n_slices is not None:
        info["n_slices"] = n_slices
    prepared: PreparedCase = {"data": data, "properties": properties, "info": info}
    if isinstance(cm, DeferredResampling):
        prepared["resample_target"] = cm.target
    return prepared
