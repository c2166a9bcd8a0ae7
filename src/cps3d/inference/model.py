"""Loading a trained model folder without nnU-Net's lookup of trainer classes by name.

``MODEL_DIR = <results>/<dataset>/<Trainer>__<plans>__<configuration>/`` holds ``plans.json``, ``dataset.json`` and
``fold_N/<checkpoint>``. A cps3d checkpoint carries nnU-Net's keys (``network_weights`` = network 1, ``init_args``,
``trainer_name``, ``inference_allowed_mirroring_axes``) plus ``network_weights_2`` (CPS only) and ``cps3d``
(``mode``, ``n_networks``). Plain nnU-Net checkpoints load too (one network).

The network is built from the plans exactly as in training, by nnU-Net's static
``nnUNetTrainer.build_network_architecture``; the parameter sets (folds x branches) are what
``nnUNetPredictor.manual_initialization`` averages over.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cps3d.files import read_json
from cps3d.options import parse_fold

log = logging.getLogger(__name__)

__all__ = ["BRANCHES", "LoadedModel", "available_folds", "load_model"]

BRANCHES = ("1", "2", "ensemble")
DEFAULT_CHECKPOINT = "checkpoint_final.pth"


@dataclass
class LoadedModel:
    """A model folder read into memory. ``parameters``: one state dict per (fold, branch), in that order;
    ``parameter_names``: ``"fold_0/network_1"`` etc. for logs; ``n_networks``: networks per checkpoint (2 for CPS)."""

    model_dir: Path
    plans: dict
    dataset_json: dict
    configuration: str
    trainer_name: str
    mirror_axes: tuple[int, ...] | None
    folds: tuple[int | str, ...]
    checkpoint: str
    branch: str
    n_networks: int
    mode: str
    parameters: list[dict] = field(repr=False)
    parameter_names: list[str]

    @property
    def plans_manager(self):
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        return PlansManager(self.plans)

    def build_network(self):
        """The network of the plans (no deep supervision) holding the first parameter set."""
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        pm = self.plans_manager
        cm = pm.get_configuration(self.configuration)
        n_in = determine_num_input_channels(pm, cm, self.dataset_json)
        n_out = pm.get_label_manager(self.dataset_json).num_segmentation_heads
        network = nnUNetTrainer.build_network_architecture(pm, cm, n_in, n_out, enable_deep_supervision=False)
        try:
            network.load_state_dict(self.parameters[0])
        except RuntimeError as e:
            raise ValueError(f"{self.model_dir}: the weights of {self.parameter_names[0]} do not fit the network of "
                             f"plans.json ({str(e).splitlines()[0]})") from e
        return network

    def describe(self) -> dict[str, Any]:
        return {"model_dir": str(self.model_dir), "configuration": self.configuration, "trainer": self.trainer_name,
                "mode": self.mode, "folds": list(self.folds), "checkpoint": self.checkpoint, "branch": self.branch,
                "parameter_sets": list(self.parameter_names)}


def available_folds(model_dir: str | os.PathLike, checkpoint: str = DEFAULT_CHECKPOINT) -> list[int]:
    """Numbered ``fold_N`` folders of ``model_dir`` holding ``checkpoint``, sorted (``fold_all`` excluded, as in
    nnU-Net's automatic fold detection)."""
    model_dir = Path(model_dir)
    folds = []
    for p in model_dir.iterdir() if model_dir.is_dir() else ():
        m = re.fullmatch(r"fold_(\d+)", p.name)
        if m and (p / checkpoint).is_file():
            folds.append(int(m.group(1)))
    return sorted(folds)


def _fold_value(f: int | str) -> int | str:
    value = parse_fold(f)
    if isinstance(value, int) and value < 0:
        raise ValueError(f"fold {f!r}: must be >= 0")
    return value


def load_model(model_dir: str | os.PathLike, folds: Sequence[int | str] | None = None,
               checkpoint: str = DEFAULT_CHECKPOINT, branch: str = "1") -> LoadedModel:
    """Read plans, dataset.json and the checkpoints of ``folds`` (None: every ``fold_N`` holding ``checkpoint``).

    ``branch``: ``1`` or ``2`` (network 1 or 2 of a CPS model) or ``ensemble`` (both; their outputs are averaged).
    Raises FileNotFoundError for a missing folder, file or checkpoint, ValueError for a branch the model does not
    have, checkpoints that disagree, or a configuration this predictor does not support (cascades).
    """
    import torch

    branch = str(branch)
    if branch not in BRANCHES:
        raise ValueError(f"branch {branch!r}: choose one of {', '.join(BRANCHES)}")
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: model folder not found (expected <results>/<dataset>/"
                                "<Trainer>__<plans>__<configuration>)")
    plans = read_json(model_dir / "plans.json")
    dataset_json = read_json(model_dir / "dataset.json")
    if folds is None or len(folds) == 0:
        fold_values: list[int | str] = list(available_folds(model_dir, checkpoint))
        if not fold_values:
            hint = " (fold_all has one: pass -f all)" if (model_dir / "fold_all" / checkpoint).is_file() else ""
            raise FileNotFoundError(f"{model_dir}: no fold_N folder holds {checkpoint}{hint}")
        log.info("Using fold(s) %s of %s", ", ".join(map(str, fold_values)), model_dir)
    else:
        fold_values = [_fold_value(f) for f in folds]
        if len(set(fold_values)) != len(fold_values):
            raise ValueError(f"folds {list(folds)}: each fold may be given once")
    parameters: list[dict] = []
    names: list[str] = []
    first: dict | None = None
    n_networks = 1
    mode = "nnunet"
    for f in fold_values:
        path = model_dir / f"fold_{f}" / checkpoint
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise ValueError(f"{path}: cannot read the checkpoint ({type(e).__name__}: {e})") from e
        if not isinstance(ckpt, dict) or "network_weights" not in ckpt or "init_args" not in ckpt:
            raise ValueError(f"{path}: not an nnU-Net/cps3d checkpoint (no network_weights / init_args)")
        meta = ckpt.get("cps3d") or {}
        nets = int(meta.get("n_networks", 2 if "network_weights_2" in ckpt else 1))
        if nets == 2 and "network_weights_2" not in ckpt:
            raise ValueError(f"{path}: says it holds two networks but has no network_weights_2")
        if first is None:
            first, n_networks, mode = ckpt, nets, str(meta.get("mode", "nnunet"))
        else:
            if ckpt["init_args"].get("configuration") != first["init_args"].get("configuration"):
                raise ValueError(f"{path}: configuration {ckpt['init_args'].get('configuration')!r} differs from "
                                 f"fold {fold_values[0]}'s {first['init_args'].get('configuration')!r}")
            if nets != n_networks:
                raise ValueError(f"{path}: holds {nets} network(s), fold {fold_values[0]} holds {n_networks}")
        if branch != "1" and nets < 2:
            raise ValueError(f"{path}: a {mode} model has one network; --branch {branch} needs a CPS model with two "
                             "(use --branch 1)")
        wanted = {"1": [1], "2": [2], "ensemble": [1, 2]}[branch]
        for k in wanted:
            parameters.append(ckpt["network_weights"] if k == 1 else ckpt["network_weights_2"])
            names.append(f"fold_{f}/network_{k}")
    assert first is not None  # fold_values is not empty
    configuration = first["init_args"].get("configuration")
    if configuration not in plans.get("configurations", {}):
        raise ValueError(f"{model_dir}: the checkpoint's configuration {configuration!r} is not in plans.json")
    cfg = plans["configurations"][configuration]
    if cfg.get("previous_stage") or cfg.get("previous_stage_name"):
        raise ValueError(f"{model_dir}: configuration {configuration!r} is a cascade stage, which cps3d predict "
                         "does not support")
    mirror = first.get("inference_allowed_mirroring_axes")
    return LoadedModel(model_dir=model_dir, plans=plans, dataset_json=dataset_json, configuration=configuration,
                       trainer_name=str(first.get("trainer_name", "nnUNetTrainer")),
                       mirror_axes=None if mirror is None else tuple(int(a) for a in mirror),
                       folds=tuple(fold_values), checkpoint=checkpoint, branch=branch, n_networks=n_networks,
                       mode=mode, parameters=parameters, parameter_names=names)
