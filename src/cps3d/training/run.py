"""Starting, resuming and distributing a training run (the API behind ``cps3d train``)."""

from __future__ import annotations

import copy
import logging
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cps3d.devices import resolve_device
from cps3d.files import read_json
from cps3d.nnunet_env import nnunet_folders
from cps3d.options import parse_fold
from cps3d.planning import DEFAULT_PLANS_NAME, load_plans
from cps3d.preprocessing import unlabeled_folder
from cps3d.training.config import TrainConfig, merge_for_resume

if TYPE_CHECKING:
    from cps3d.training.base import MultiNetworkTrainer

log = logging.getLogger(__name__)

NNUNET_FOLDS = 5  # nnU-Net's cross-validation when the preprocessed folder has no splits_final.json


def check_fold(fold: int | str, preprocessed_root: str | os.PathLike, dataset_name: str) -> int | str:
    """``fold`` as training uses it: ``"all"``, or a fold number the dataset's split has: 0-4 of nnU-Net's
    five-fold split, or 0 to N-1 when ``<preprocessed>/<dataset>/splits_final.json`` lists N folds.

    nnU-Net's trainer trains any other number on a random 80:20 split with only a warning, hence the check. Raises
    ValueError naming the fold and the valid range (or the malformed splits file).
    """
    number = parse_fold(fold)
    if isinstance(number, str):  # "all"
        return number
    splits_file = Path(preprocessed_root) / dataset_name / "splits_final.json"
    n, source = NNUNET_FOLDS, "nnU-Net's 5-fold split"
    if splits_file.is_file():
        splits = read_json(splits_file)
        if not isinstance(splits, list) or not splits:
            raise ValueError(f"{splits_file}: expected a non-empty list of folds ({{\"train\": [...], \"val\": [...]}})")
        n, source = len(splits), f"the {len(splits)} fold(s) of {splits_file}"
    if not 0 <= number < n:
        raise ValueError(f"fold {fold}: choose 0-{n - 1} ({source}) or 'all'")
    return number


def _checkpoint_epoch(path: Path) -> int:
    """The epoch a checkpoint resumes at (its ``current_epoch``); ValueError naming the file if it cannot be read or
    has none."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)  # mmap: no weights are read
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"{path}: cannot read the checkpoint ({e}); move it away to resume from the other one") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("current_epoch"), int):
        raise ValueError(f"{path}: not a training checkpoint (no integer 'current_epoch')")
    return ckpt["current_epoch"]


def resume_checkpoint(fold_folder: str | os.PathLike) -> Path | None:
    """The checkpoint ``--continue`` resumes from: the one of ``checkpoint_final.pth`` and ``checkpoint_latest.pth``
    with the later epoch (``current_epoch``; the final one on a tie), else ``checkpoint_best.pth``, else None.

    nnU-Net prefers the final checkpoint whenever it exists; but a finished run extended to more epochs and killed
    midway has an old final checkpoint and a later latest one, and resuming from the final one would throw the
    extension away. The epoch stored in the file decides, not its modification time, which a copy of the run folder
    need not keep.
    """
    folder = Path(fold_folder)
    candidates = [folder / c for c in ("checkpoint_final.pth", "checkpoint_latest.pth") if (folder / c).is_file()]
    if candidates:
        epochs = [_checkpoint_epoch(c) for c in candidates]
        return candidates[epochs.index(max(epochs))]  # the first of equal epochs: final
    best = folder / "checkpoint_best.pth"
    return best if best.is_file() else None


def saved_train_config(fold_folder: str | os.PathLike, checkpoint: Path | None = None) -> TrainConfig | None:
    """The configuration a run folder was trained with: the ``cps3d.train_config`` of ``checkpoint`` (by default the
    one ``--continue`` resumes from, :func:`resume_checkpoint`), else ``train_config`` in ``cps3d_config.json``, else
    None (nothing trained yet). Raises ValueError naming the file if the saved configuration is not a valid one."""
    folder = Path(fold_folder)
    checkpoint = checkpoint if checkpoint is not None else resume_checkpoint(folder)
    if checkpoint is not None:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
        saved, source = ckpt.get("cps3d", {}).get("train_config"), checkpoint
    else:
        saved, source = None, None
    if saved is None and (folder / "cps3d_config.json").is_file():
        saved, source = read_json(folder / "cps3d_config.json").get("train_config"), folder / "cps3d_config.json"
    if saved is None:
        return None
    try:
        return TrainConfig.from_dict(saved)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: its saved training configuration is not valid ({e})") from e


def model_folder(results_root: str | os.PathLike, dataset_name: str, mode: str, plans_name: str,
                 configuration: str) -> Path:
    """``<results>/<dataset>/<Trainer>__<plans>__<configuration>``: nnU-Net's layout; holds fold_N/ folders."""
    from cps3d.training.trainer import TRAINERS

    return Path(results_root) / dataset_name / f"{TRAINERS[mode].__name__}__{plans_name}__{configuration}"


def _has_cases(folder: Path) -> bool:
    return folder.is_dir() and any(f.suffix == ".b2nd" and not f.name.endswith("_seg.b2nd") for f in folder.iterdir())


def maybe_init_distributed(device: torch.device) -> bool:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE > 1); NCCL on CUDA, gloo on
    CPU. Returns whether this process is part of a distributed run."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return True


def build_trainer(dataset_name: str, preprocessed_root: str | os.PathLike, results_root: str | os.PathLike,
                  configuration: str, fold: int | str, config: TrainConfig, plans_name: str = DEFAULT_PLANS_NAME,
                  device: torch.device | str | None = None, plans: dict | None = None, continue_training: bool = False,
                  show_progress: bool = True) -> MultiNetworkTrainer:
    """The trainer of ``config.mode`` for one fold, configured with ``config`` and initialised (networks, optimizers,
    schedules and loss built; the data loaders come with ``run_training`` or ``get_dataloaders``).

    ``plans`` (default: ``<preprocessed>/<dataset>/<plans_name>.json``) is copied, not changed. ``continue_training``
    tells nnU-Net's logger to append to the run's log. ``fold`` is used as given (see :func:`check_fold`). Its
    ``output_folder`` is ``model_folder(...)/fold_<fold>``.
    """
    from cps3d.training.trainer import TRAINERS

    device = resolve_device(device)
    plans = copy.deepcopy(plans) if plans is not None else load_plans(preprocessed_root, dataset_name, plans_name)
    plans["continue_training"] = continue_training  # nnU-Net's trainer pops this key
    dataset_json = read_json(Path(preprocessed_root) / dataset_name / "dataset.json")
    with nnunet_folders(preprocessed=preprocessed_root, results=results_root):
        trainer = TRAINERS[config.mode](plans, configuration, fold, dataset_json, device)
        trainer.configure(config, show_progress=show_progress)
        trainer.initialize()
    return trainer


def train(dataset_name: str, preprocessed_root: str | os.PathLike, results_root: str | os.PathLike,
          configuration: str, fold: int | str, config: TrainConfig, plans_name: str = DEFAULT_PLANS_NAME,
          device: torch.device | str | None = None, continue_training: bool = False, overwrite: bool = False,
          show_progress: bool = True) -> MultiNetworkTrainer:
    """Train one fold and return the trainer (its ``output_folder`` holds checkpoints, logs and plots).

    ``fold`` is 0-4 or ``"all"`` (see :func:`check_fold`). Raises FileExistsError if the fold already holds a finished
    training and neither ``continue_training`` (extend or resume it) nor ``overwrite`` (start again) is given.
    """
    device = resolve_device(device)
    fold = check_fold(fold, preprocessed_root, dataset_name)
    plans = load_plans(preprocessed_root, dataset_name, plans_name)
    if configuration not in plans["configurations"]:
        raise ValueError(f"configuration {configuration!r} not in {plans_name}.json "
                         f"(has: {sorted(plans['configurations'])}); run 'cps3d plan -c {configuration}'")
    data_folder = Path(preprocessed_root) / dataset_name / \
        plans["configurations"][configuration].get("data_identifier", f"{plans_name}_{configuration}")
    if not _has_cases(data_folder):
        raise FileNotFoundError(f"{data_folder}: no preprocessed cases; run 'cps3d preprocess -d {dataset_name} "
                                f"-c {configuration}' first")
    if config.mode == "cps" and not _has_cases(unlabeled_folder(data_folder)):
        raise FileNotFoundError(f"{unlabeled_folder(data_folder)}: no preprocessed unlabeled cases; CPS needs scans in "
                                "imagesUnlabeled/ (then 'cps3d preprocess'), or train with --mode supervised")
    distributed = maybe_init_distributed(device)
    out = model_folder(results_root, dataset_name, config.mode, plans_name, configuration) / f"fold_{fold}"
    checkpoint = resume_checkpoint(out) if continue_training else None
    if checkpoint is not None:
        saved = saved_train_config(out, checkpoint)
        if saved is not None:  # the run folder's configuration rules; only RESUMABLE options may change
            config, changes = merge_for_resume(saved, config.to_dict())
            for change in changes:
                log.info("--continue: %s", change)
    trainer = build_trainer(dataset_name, preprocessed_root, results_root, configuration, fold, config, plans_name,
                            device, plans, continue_training, show_progress)
    with nnunet_folders(preprocessed=preprocessed_root, results=results_root):
        if continue_training:
            if checkpoint is not None:
                log.info("Resuming from %s", checkpoint)
                trainer.load_checkpoint(str(checkpoint))
            else:
                log.warning("--continue: no checkpoint in %s; starting a new training", out)
        elif (out / "checkpoint_final.pth").is_file() and not overwrite:
            raise FileExistsError(f"{out} already holds a finished training; pass --continue to resume or extend it "
                                  "(with more --epochs), or --overwrite to train again from scratch")
        if trainer.current_epoch >= trainer.num_epochs:
            if config.final_validation and not (out / "validation" / "summary.json").is_file():
                # killed during the final validation (it runs after checkpoint_final.pth is written): finish it
                log.info("Training finished (%d of %d epochs) but %s is missing: running the final validation",
                         trainer.current_epoch, trainer.num_epochs, out / "validation" / "summary.json")
                trainer.perform_actual_validation()
            else:
                log.info("Training already finished (%d of %d epochs); nothing to do", trainer.current_epoch,
                         trainer.num_epochs)
        else:
            trainer.run_training()
            if config.final_validation:
                trainer.perform_actual_validation()
    if distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return trainer
