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

The names of the torch-dependent modules (model, predictor, export) are imported on first use, so that importing
this package for the forced-spacing rule stays cheap.
"""

from __future__ import annotations

import importlib

from cps3d.inference.forced_spacing import (
    PRESETS,
    ForcedSpacing,
    assumed_spacing,
    parse_forced_spacing,
    through_plane_axis,
)
from cps3d.inference.inputs import Case, list_cases, select_part
from cps3d.inference.postprocessing import Postprocessing, keep_largest_component

_LAZY = {
    "predict": "predictor", "PredictConfig": "predictor", "PredictionReport": "predictor",
    "CaseResult": "predictor", "CaseFailure": "predictor", "CPSPredictor": "predictor", "PROTOCOLS": "predictor",
    "make_predictor": "predictor", "prepare_case": "predictor",
    "LoadedModel": "model", "load_model": "model", "available_folds": "model",
    "segmentation_low_memory": "export", "export_case": "export",
}

__all__ = ["PRESETS", "ForcedSpacing", "assumed_spacing", "parse_forced_spacing", "through_plane_axis", "Case",
           "list_cases", "select_part", "Postprocessing", "keep_largest_component", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
