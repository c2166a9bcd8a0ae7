"""Experiment planning: nnU-Net's residual-encoder planners, with CPS memory accounting and size overrides.

nnU-Net chooses patch size, network topology and batch size so that one network training on one batch fits a GPU
memory target. CPS trains two networks, each on a labeled and an unlabeled batch per iteration, so it holds about
``2 * (1 + r)`` times the activations of that setting (``r`` = unlabeled / labeled batch size, 1 by default): 4x. We
therefore give nnU-Net's planner the memory target divided by this factor (``memory_factor``): with the default
ResEnc M target of 8 GB, the networks are planned as if for 2 GB each, and CPS training then needs about 8 GB.
The factor, the GPU target and the per-network target are recorded in the plans under ``"cps3d"``.

Everything else is nnU-Net's planner unchanged; cps3d-specific fields are extra keys that nnU-Net ignores
(``"cps3d"`` at the top level, ``"unlabeled_batch_size"`` in each configuration), so nnU-Net's ``PlansManager`` reads
our plans file as its own. Overrides (patch size, number of stages, base/maximum features, batch sizes) are applied
after planning, rebuilding the topology with nnU-Net's own ``get_pool_and_conv_props``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from copy import deepcopy
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cps3d.files import read_json, write_json
from cps3d.nnunet_env import nnunet_folders, planner_thread_count
from cps3d.options import check_choice

log = logging.getLogger(__name__)

CONFIGURATIONS = ("2d", "3d_fullres")
DEFAULT_PLANS_NAME = "cps3dPlans"


def _planner_classes() -> dict[str, type]:
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
        ResEncUNetPlanner,
        nnUNetPlannerResEncL,
        nnUNetPlannerResEncM,
        nnUNetPlannerResEncXL,
    )

    return {c.__name__: c for c in (nnUNetPlannerResEncM, nnUNetPlannerResEncL, nnUNetPlannerResEncXL,
                                     ResEncUNetPlanner, ExperimentPlanner)}


PLANNERS = ("nnUNetPlannerResEncM", "nnUNetPlannerResEncL", "nnUNetPlannerResEncXL", "ResEncUNetPlanner",
            "ExperimentPlanner")


@dataclass(frozen=True)
class PlanConfig:
    """What to plan and which of nnU-Net's choices to override.

    planner: nnU-Net planner class name (residual-encoder planners; ``ExperimentPlanner`` is the plain U-Net).
    configurations: which of ``2d`` and ``3d_fullres`` to (re)plan; others already in the plans file are kept.
    gpu_memory_gb: GPU memory CPS training may use; None = the planner's nominal target (8 GB for ResEnc M).
    memory_factor: None = ``2 * (1 + unlabeled/labeled batch ratio)``; 1 plans exactly as nnU-Net would.
    patch_size: voxels per axis, in the configuration's (transposed) axis order; its length must match the
        dimensionality of every configuration planned.
    n_stages, base_features, max_features: network size overrides.
    batch_size, unlabeled_batch_size: labeled and unlabeled batch per network and iteration (unlabeled defaults to
        the labeled one).
    """

    planner: str = "nnUNetPlannerResEncM"
    plans_name: str = DEFAULT_PLANS_NAME
    configurations: tuple[str, ...] = CONFIGURATIONS
    gpu_memory_gb: float | None = None
    memory_factor: float | None = None
    patch_size: tuple[int, ...] | None = None
    n_stages: int | None = None
    base_features: int | None = None
    max_features: int | None = None
    batch_size: int | None = None
    unlabeled_batch_size: int | None = None

    def __post_init__(self) -> None:
        check_choice("planner", self.planner, PLANNERS)
        bad = [c for c in self.configurations if c not in CONFIGURATIONS]
        if bad or not self.configurations:
            raise ValueError(f"configurations={list(self.configurations)}: choose among {', '.join(CONFIGURATIONS)}")
        if self.patch_size is not None:
            if any(int(p) < 4 for p in self.patch_size):
                raise ValueError(f"patch_size={self.patch_size}: every axis needs at least 4 voxels")
            dims = {2 if c == "2d" else 3 for c in self.configurations}
            if dims != {len(self.patch_size)}:
                raise ValueError(f"patch_size={self.patch_size} has {len(self.patch_size)} axes but configurations "
                                 f"{list(self.configurations)} need {sorted(dims)}: plan 2d and 3d_fullres separately")
        for name in ("n_stages", "base_features", "max_features", "batch_size", "unlabeled_batch_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name}={v}: must be a positive integer")
        if self.n_stages is not None and self.n_stages < 2:
            raise ValueError(f"n_stages={self.n_stages}: a U-Net needs at least 2 stages")
        if self.base_features and self.max_features and self.max_features < self.base_features:
            raise ValueError(f"max_features={self.max_features} is smaller than base_features={self.base_features}")
        if self.gpu_memory_gb is not None and self.gpu_memory_gb <= 0:
            raise ValueError(f"gpu_memory_gb={self.gpu_memory_gb}: must be positive")
        if self.memory_factor is not None and self.memory_factor <= 0:
            raise ValueError(f"memory_factor={self.memory_factor}: must be positive")

    def resolved_memory_factor(self) -> float:
        if self.memory_factor is not None:
            return float(self.memory_factor)
        ratio = 1.0
        if self.batch_size and self.unlabeled_batch_size:
            ratio = self.unlabeled_batch_size / self.batch_size
        return 2.0 * (1.0 + ratio)


def _make_planner(config: PlanConfig, dataset_name: str):
    """Instantiate nnU-Net's planner with the CPS memory target and feature overrides."""
    base = _planner_classes()[config.planner]

    class _CPSPlanner(base):  # type: ignore[valid-type, misc]
        # Plans are kept in memory: cps3d merges them into the plans file itself (atomically, keeping configurations
        # it did not plan). Preprocessed data depend on our fingerprint, so data identifiers name our plans.
        def save_plans(self, plans):
            self.plans = plans

        def generate_data_identifier(self, configuration_name: str) -> str:
            return self.plans_identifier + "_" + configuration_name

    _CPSPlanner.__name__ = base.__name__
    planner = _CPSPlanner(dataset_name, plans_name=config.plans_name)
    nominal = float(planner.UNet_vram_target_GB)
    gpu = float(config.gpu_memory_gb) if config.gpu_memory_gb is not None else nominal
    factor = config.resolved_memory_factor()
    planner.UNet_vram_target_GB = gpu / factor
    if config.base_features is not None:
        planner.UNet_base_num_features = int(config.base_features)
    if config.max_features is not None:
        planner.UNet_max_features_2d = planner.UNet_max_features_3d = int(config.max_features)
    memory = {"gpu_memory_target_gb": gpu, "memory_factor": factor, "network_memory_target_gb": gpu / factor,
              "planner_nominal_target_gb": nominal}
    return planner, memory


def _features_per_stage(n_stages: int, base: int, maximum: int) -> tuple[int, ...]:
    return tuple(min(maximum, base * 2 ** i) for i in range(n_stages))


def apply_topology_overrides(plan: dict, patch_size: tuple[int, ...] | None, n_stages: int | None,
                             base_features: int, max_features: int, min_edge: int, encoder_blocks: tuple[int, ...],
                             decoder_blocks: tuple[int, ...], uses_residual_blocks: bool) -> dict:
    """Rebuild a configuration's topology for a given patch size and/or number of stages, as nnU-Net's planner does
    (``get_pool_and_conv_props``); the patch size may grow to the next size the pooling divides."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    plan = deepcopy(plan)
    spacing = plan["spacing"]
    patch = list(patch_size) if patch_size is not None else list(plan["patch_size"])
    max_numpool = (n_stages - 1) if n_stages is not None else 999999
    _, pool, conv, new_patch, _ = get_pool_and_conv_props(spacing, patch, min_edge, max_numpool)
    stages = len(pool)
    if n_stages is not None and stages < n_stages:
        raise ValueError(f"a patch of {patch} voxels at spacing {spacing} allows at most {stages} stages "
                         f"(feature maps of at least {min_edge} voxels), not n_stages={n_stages}: enlarge the patch")
    if n_stages is not None and stages > n_stages:
        # anisotropic spacing: axes start pooling at different stages, so n-1 poolings per axis can take more steps
        raise ValueError(f"a patch of {patch} voxels at spacing {spacing} needs {stages} stages to pool each axis up "
                         f"to {n_stages - 1} times (anisotropic spacing), not n_stages={n_stages}: give "
                         f"n_stages={stages} or leave it out")
    if patch_size is not None and tuple(new_patch) != tuple(patch_size):
        log.warning("patch size %s rounded up to %s so that every pooling divides it", list(patch_size), list(new_patch))
    arch = plan["architecture"]["arch_kwargs"]
    arch.update({
        "n_stages": stages,
        "features_per_stage": _features_per_stage(stages, base_features, max_features),
        "kernel_sizes": conv,
        "strides": pool,
    })
    if uses_residual_blocks:
        arch["n_blocks_per_stage"] = tuple(encoder_blocks[:stages])
    else:
        arch["n_conv_per_stage"] = tuple(encoder_blocks[:stages])
    arch["n_conv_per_stage_decoder"] = tuple(decoder_blocks[:stages - 1])
    plan["patch_size"] = tuple(int(i) for i in new_patch)
    return plan


def plans_path(preprocessed_root: str | os.PathLike, dataset_name: str, plans_name: str = DEFAULT_PLANS_NAME) -> Path:
    return Path(preprocessed_root) / dataset_name / f"{plans_name}.json"


def plan_experiment(raw_root: str | os.PathLike, preprocessed_root: str | os.PathLike, dataset_name: str,
                    config: PlanConfig = PlanConfig(), fingerprint_meta: dict | None = None) -> dict:
    """Plan the configurations of ``config`` and merge them into ``<preprocessed>/<dataset>/<plans_name>.json``.

    The fingerprint must exist (``cps3d.fingerprint.ensure_fingerprint``). Returns the whole plans dict written.
    """
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export

    captured = io.StringIO()
    with nnunet_folders(raw=raw_root, preprocessed=preprocessed_root), planner_thread_count(), \
            contextlib.redirect_stdout(captured):  # nnU-Net prints every plan it considers
        planner, memory = _make_planner(config, dataset_name)
        planner.plan_experiment()
    log.debug("nnU-Net planner output:\n%s", captured.getvalue())
    new = planner.plans
    recursive_fix_for_json_export(new)
    is_residual = "ResidualEncoderUNet" in next(iter(new["configurations"].values()))["architecture"]["network_class_name"]
    for name in list(new["configurations"]):
        if name not in config.configurations:
            del new["configurations"][name]
            continue
        plan = new["configurations"][name]
        if config.patch_size is not None or config.n_stages is not None:
            dims = len(plan["spacing"])
            max_f = planner.UNet_max_features_2d if dims == 2 else planner.UNet_max_features_3d
            plan = apply_topology_overrides(plan, config.patch_size, config.n_stages, planner.UNet_base_num_features,
                                            max_f, planner.UNet_featuremap_min_edge_length,
                                            planner.UNet_blocks_per_stage_encoder, planner.UNet_blocks_per_stage_decoder,
                                            is_residual)
        if config.batch_size is not None:
            plan["batch_size"] = int(config.batch_size)
        plan["unlabeled_batch_size"] = int(config.unlabeled_batch_size or plan["batch_size"])
        new["configurations"][name] = plan
    missing = [c for c in config.configurations if c not in new["configurations"]]
    if missing:
        raise ValueError(f"{dataset_name}: nnU-Net did not produce configuration(s) {missing} "
                         "(a 3d configuration needs 3D images)")
    path = plans_path(preprocessed_root, dataset_name, config.plans_name)
    plans = new
    if path.is_file():
        old = read_json(path)
        kept = {k: v for k, v in old.get("configurations", {}).items() if k not in new["configurations"]}
        plans["configurations"] = {**kept, **new["configurations"]}
    plans["cps3d"] = {
        **{k: v for k, v in asdict(config).items() if k != "configurations"},
        **memory,
        "planned_configurations": sorted(plans["configurations"]),
        "fingerprint": fingerprint_meta or {},
    }
    recursive_fix_for_json_export(plans)
    write_json(path, plans)
    for name in config.configurations:
        c = plans["configurations"][name]
        a = c["architecture"]["arch_kwargs"]
        log.info("%s: patch %s, batch %d labeled + %d unlabeled, %d stages, features %s, spacing %s",
                 name, list(c["patch_size"]), c["batch_size"], c["unlabeled_batch_size"], a["n_stages"],
                 list(a["features_per_stage"]), [round(float(s), 3) for s in c["spacing"]])
    log.info("Plans written to %s (memory target %.1f GB for CPS = %.2f GB per network and batch x factor %.1f)",
             path, memory["gpu_memory_target_gb"], memory["network_memory_target_gb"], memory["memory_factor"])
    return plans


def load_plans(preprocessed_root: str | os.PathLike, dataset_name: str, plans_name: str = DEFAULT_PLANS_NAME) -> dict:
    path = plans_path(preprocessed_root, dataset_name, plans_name)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: plans not found; run 'cps3d plan -d {dataset_name}' first")
    return read_json(path)


def configuration_summary(plans: dict, configuration: str) -> dict:
    """A short description of one configuration (for logs and reports)."""
    if configuration not in plans["configurations"]:
        raise ValueError(f"configuration {configuration!r} not in plans (has: {sorted(plans['configurations'])})")
    c = plans["configurations"][configuration]
    if "inherits_from" in c:
        raise ValueError(f"configuration {configuration!r} inherits from another one; cps3d trains 2d and 3d_fullres")
    a = c["architecture"]["arch_kwargs"]
    return {"patch_size": list(c["patch_size"]), "batch_size": c["batch_size"],
            "unlabeled_batch_size": c.get("unlabeled_batch_size", c["batch_size"]), "n_stages": a["n_stages"],
            "features_per_stage": list(a["features_per_stage"]), "spacing": [float(s) for s in c["spacing"]],
            "median_shape": [float(s) for s in np.atleast_1d(c["median_image_size_in_voxels"])]}
