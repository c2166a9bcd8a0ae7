"""Inference: forced spacing, model loading (branch 1, 2 or their ensemble), low-memory export, post-processing.

- :mod:`cps3d.inference.forced_spacing`: the paper's forced-spacing rule and the through-plane axis of a scan.
- :mod:`cps3d.inference.inputs`: input folders, file lists and DICOM series as cases; ``--part-id/--num-parts``.
- :mod:`cps3d.inference.model`: a model folder read without nnU-Net's class lookup by name.
- :mod:`cps3d.inference.config`: :class:`PredictConfig`, the protocols and the per-case results of a run.
- :mod:`cps3d.inference.prepare`: reading and preprocessing one case for the network.
- :mod:`cps3d.inference.predictor`: :func:`predict` (the API of ``cps3d predict``): the run over the cases.
- :mod:`cps3d.inference.export`: one-class-at-a-time export on the original grid, probabilities like nnU-Net.
- :mod:`cps3d.inference.fast`: the fast path, nnU-Net's torch resampling on the network's device.
- :mod:`cps3d.inference.postprocessing`: largest connected component per label, or nnU-Net's decisions.

Importing this package imports torch and nnU-Net's predictor (about 2 s): the public API below is plain names, so
that type checkers see them.
"""

from __future__ import annotations

from cps3d.inference.export import export_case, segmentation_low_memory
from cps3d.inference.forced_spacing import (
    PRESETS,
    ForcedSpacing,
    assumed_spacing,
    parse_forced_spacing,
    through_plane_axis,
)
from cps3d.inference.inputs import Case, list_cases, select_part
from cps3d.inference.model import LoadedModel, available_folds, load_model
from cps3d.inference.postprocessing import Postprocessing, keep_largest_component
from cps3d.inference.predictor import (
    PROTOCOLS,
    CaseFailure,
    CaseResult,
    CPSPredictor,
    PredictConfig,
    PredictionReport,
    make_predictor,
    predict,
    prepare_case,
)

__all__ = ["PRESETS", "ForcedSpacing", "assumed_spacing", "parse_forced_spacing", "through_plane_axis", "Case",
           "list_cases", "select_part", "Postprocessing", "keep_largest_component", "predict", "PredictConfig",
           "PredictionReport", "CaseResult", "CaseFailure", "CPSPredictor", "PROTOCOLS", "make_predictor",
           "prepare_case", "LoadedModel", "load_model", "available_folds", "segmentation_low_memory", "export_case"]
