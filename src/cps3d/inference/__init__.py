"""Inference: forced spacing, model loading (branch 1, 2 or their ensemble), low-memory export, post-processing.

- :mod:`cps3d.inference.forced_spacing`: the paper's forced-spacing rule and the through-plane axis of a scan.
- :mod:`cps3d.inference.inputs`: input folders, file lists and DICOM series as cases; ``--part-id/--num-parts``.
- :mod:`cps3d.inference.model`: a model folder read without nnU-Net's class lookup by name.
- :mod:`cps3d.inference.config`: :class:`PredictConfig`, the protocols and the per-case results of a run.
- :mod:`cps3d.inference.prepare`: reading and preprocessing one case for the network.
- :mod:`cps3d.inference.predictor`: :func:`predict` (the API of ``cps3d predict``): the run over the cases.
- :mod:`cps3d.inference.export`: one-class-at-a-time export on the original grid, probabilities like nnU-Net.
- :mod:`cps3d.inference.fast`: the torch paths (``torch-export``, ``torch``): nnU-Net's torch resampling.
- :mod:`cps3d.inference.postprocessing`: largest connected component per label, or nnU-Net's decisions.

Importing this package imports none of them: each public name below is imported on first use (the CLI reads
:class:`PredictConfig`'s defaults and the option sets for its help without loading torch and nnU-Net's predictor,
about 10 s); the same names are imported plainly for type checkers, so that they see the real signatures.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cps3d.inference.config import PROTOCOLS, CaseFailure, CaseResult, PredictConfig, PredictionReport
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
    from cps3d.inference.predictor import CPSPredictor, make_predictor, predict, prepare_case

# public name -> the module that defines it
_HOMES = {
    **dict.fromkeys(("PROTOCOLS", "CaseFailure", "CaseResult", "PredictConfig", "PredictionReport"), "config"),
    **dict.fromkeys(("export_case", "segmentation_low_memory"), "export"),
    **dict.fromkeys(("PRESETS", "ForcedSpacing", "assumed_spacing", "parse_forced_spacing", "through_plane_axis"),
                    "forced_spacing"),
    **dict.fromkeys(("Case", "list_cases", "select_part"), "inputs"),
    **dict.fromkeys(("LoadedModel", "available_folds", "load_model"), "model"),
    **dict.fromkeys(("Postprocessing", "keep_largest_component"), "postprocessing"),
    **dict.fromkeys(("CPSPredictor", "make_predictor", "predict", "prepare_case"), "predictor"),
}

__all__ = ["PRESETS", "ForcedSpacing", "assumed_spacing", "parse_forced_spacing", "through_plane_axis", "Case",
           "list_cases", "select_part", "Postprocessing", "keep_largest_component", "predict", "PredictConfig",
           "PredictionReport", "CaseResult", "CaseFailure", "CPSPredictor", "PROTOCOLS", "make_predictor",
           "prepare_case", "LoadedModel", "load_model", "available_folds", "segmentation_low_memory", "export_case"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
