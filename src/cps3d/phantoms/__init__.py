"""Synthetic abdominal CT phantoms with FLARE 2022 organ labels (demo data and the project's test datasets).

Public interface::

    params = sample_case(rng, size="small")            # anatomy + acquisition + grid, JSON-serialisable
    image, label, geometry = render_case(params)       # int16 HU, uint8 labels, same [z, y, x] grid
    folder = write_dataset(out_dir, labeled=8, unlabeled=16, test=4, seed=0, size="small")

See :mod:`cps3d.phantoms.sampling` for the anatomy model and :mod:`cps3d.phantoms.render` for how it is drawn.
"""

from cps3d.evaluation.organs import FLARE_LABELS
from cps3d.phantoms.params import ORGAN_HU_RANGES, SIZES, CaseParams, Grid, Structure
from cps3d.phantoms.render import Geometry, render_case
from cps3d.phantoms.sampling import SIZE_SPECS, sample_case
from cps3d.phantoms.writer import (
    DEFAULT_DATASET_ID,
    DEFAULT_NAME,
    PARAMS_FOLDER,
    case_ids,
    case_rng,
    load_case_params,
    write_case_files,
    write_dataset,
)

__all__ = [
    "DEFAULT_DATASET_ID", "DEFAULT_NAME", "FLARE_LABELS", "ORGAN_HU_RANGES", "PARAMS_FOLDER", "SIZES", "SIZE_SPECS",
    "CaseParams", "Geometry", "Grid", "Structure", "case_ids", "case_rng", "load_case_params", "render_case",
    "sample_case", "write_case_files", "write_dataset",
]
