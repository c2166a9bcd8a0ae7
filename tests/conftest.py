"""Shared fixtures. nnU-Net's worker counts are set before anything imports nnU-Net, so that tests never spawn more
processes than they need (nnU-Net reads nnUNet_def_n_proc at import time)."""

from __future__ import annotations

import os

os.environ.setdefault("nnUNet_n_proc_DA", "0")
os.environ.setdefault("nnUNet_def_n_proc", "1")
os.environ.setdefault("nnUNet_compile", "false")

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from toy_data import write_toy_dataset  # noqa: E402

REAL_CT = Path(__file__).parent / "data" / "real_ct"


@dataclass(frozen=True)
class TinyProject:
    """A planned, preprocessed dataset and a CPS model trained for one short epoch on it."""

    raw_root: Path
    preprocessed_root: Path
    results_root: Path
    dataset_name: str
    model_dir: Path  # <results>/<dataset>/CPSTrainer__cps3dPlans__3d_fullres (holds fold_0/)


TINY_PLAN = dict(patch_size=(16, 32, 32), n_stages=3, base_features=4, max_features=16, batch_size=2)


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> TinyProject:
    """Plan, preprocess and train a tiny CPS model once per test session (about 15 s on 2 cores)."""
    from cps3d.dataset import RawDataset
    from cps3d.fingerprint import ensure_fingerprint
    from cps3d.planning import PlanConfig, plan_experiment
    from cps3d.preprocessing import preprocess
    from cps3d.training.config import TrainConfig
    from cps3d.training.run import train

    root = tmp_path_factory.mktemp("tiny_project")
    raw, pre, res = root / "raw", root / "preprocessed", root / "results"
    ds = RawDataset.load(write_toy_dataset(raw))
    fp = ensure_fingerprint(ds, pre, progress=False)
    plans = plan_experiment(raw, pre, ds.name, PlanConfig(configurations=("3d_fullres",), **TINY_PLAN), fp["cps3d"])
    preprocess(ds, pre, plans, "3d_fullres", progress=False)
    trainer = train(ds.name, pre, res, "3d_fullres", 0,
                    TrainConfig(epochs=1, iters_per_epoch=2, val_iters=1, final_validation=False),
                    device="cpu", show_progress=False)
    return TinyProject(raw, pre, res, ds.name, Path(trainer.output_folder).parent)
