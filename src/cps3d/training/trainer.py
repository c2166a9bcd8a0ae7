"""The CPS trainer: nnU-Net's trainer with two sibling networks, two optimizers and an unlabeled data stream.

``CPSTrainer`` subclasses ``nnUNetTrainer`` and overrides only the hooks CPS changes: building two networks with
different initialisations and one optimizer and learning-rate schedule each, a second (unlabeled) data loader with
nnU-Net's augmentation, the training step (DESIGN section 4, maths in ``cps3d.training.losses``), validation of
network 1, network 2 and their average, logging and plotting of the extra curves, and checkpoints holding both
networks. Everything else (data loading, augmentation, patch sampling, Dice+CE with deep supervision, the
cross-validation split, the final validation) is nnU-Net's. ``SupervisedTrainer`` is the same with one network and
no CPS term: the baseline of the paper's ablation.

Traps of the base class handled here: its checkpoints store only ``self.network``; its logger accepts only keys it
knows (we register ours) and plots exactly one value per key and epoch; under DDP it moves ranks to CUDA and wraps
with ``device_ids`` (we keep the given device so that gloo on CPU works).
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from collections.abc import Sequence
from time import time
from typing import Any

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from torch import autocast
from torch import distributed as dist
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from cps3d import __version__
from cps3d.files import atomic_path, write_json
from cps3d.preprocessing import unlabeled_folder
from cps3d.training.config import TrainConfig
from cps3d.training.losses import (
    CrossFn,
    as_list,
    cps_loss_terms,
    cross_terms,
    paper_cross_fn,
    pseudo_label_cross_entropy,
    pseudo_label_stats,
)
from cps3d.training.progress import plot_progress
from cps3d.training.schedules import PlateauSchedule, cps_lambda, extended_poly_initial_lr

# keys we log once per epoch in addition to nnU-Net's own
_CPS_LOG_KEYS = ("train_sup_losses", "train_cps_losses", "train_losses_net1", "train_losses_net2", "lambda", "lrs_2",
                 "mean_fg_dice_net2", "mean_fg_dice_avg", "dice_per_class_net2", "dice_per_class_avg",
                 "pseudo_fg_fraction", "pseudo_confident_fraction")
_SUPERVISED_LOG_KEYS = ("train_sup_losses", "lambda")


def unwrap(module: torch.nn.Module) -> Any:
    """The plain network inside DDP and torch.compile wrappers."""
    if isinstance(module, DDP):
        module = module.module
    if isinstance(module, OptimizedModule):
        module = module._orig_mod
    return module


class _UnlabeledDataLoader(nnUNetDataLoader):
    """nnU-Net's loader on unlabeled cases: random patches only (there are no labels to oversample or to ignore)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.has_ignore = False


class CPSTrainer(nnUNetTrainer):
    """Two sibling networks trained with Dice+CE supervision plus cross pseudo supervision (see module docstring).

    Construct it like ``nnUNetTrainer`` (nnU-Net records the constructor's arguments in checkpoints, so the signature
    is unchanged), then call ``configure(TrainConfig(...))`` before training.
    """

    # attributes set by nnU-Net's base class, typed here for the type checker
    was_initialized: bool
    current_epoch: int
    _best_ema: float | None
    inference_allowed_mirroring_axes: tuple[int, ...] | None

    def __init__(self, plans: dict, configuration: str, fold: int | str, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp:
            # the base class sets cuda:rank; keep a CPU device for gloo and use the node-local rank on CUDA
            local = int(os.environ.get("LOCAL_RANK", str(self.local_rank)))
            self.device = torch.device("cuda", local) if device.type == "cuda" else device
            self.grad_scaler = torch.GradScaler("cuda") if self.device.type == "cuda" else None
        self.train_config = TrainConfig(mode=self.mode)
        self.networks: list[Any] = []  # nn.Modules, wrapped in DDP / torch.compile where used
        self.optimizers: list[torch.optim.Optimizer] = []
        self.schedulers: list = []
        self.dataloader_unlabeled: Any = None
        self.unlabeled_batch_size = 0
        self.current_lambda = 0.0
        self.show_progress = True
        logged = self.logger.local_logger.my_fantastic_logging
        for key in (_CPS_LOG_KEYS if self.mode == "cps" else _SUPERVISED_LOG_KEYS):
            logged.setdefault(key, [])

    mode = "cps"

    # ------------------------------------------------------------------ configuration
    def configure(self, config: TrainConfig, show_progress: bool = True) -> None:
        """Apply a TrainConfig (must match this trainer's mode); call before ``initialize``/``run_training``."""
        if self.was_initialized:
            raise RuntimeError("configure() must be called before the trainer is initialised")
        if config.mode != self.mode:
            raise ValueError(f"{type(self).__name__} trains mode {self.mode!r}, the config says {config.mode!r}")
        self.train_config = config
        self.num_epochs = config.epochs
        self.num_iterations_per_epoch = config.iters_per_epoch
        self.num_val_iterations_per_epoch = config.val_iters
        self.initial_lr = config.initial_lr
        self.weight_decay = config.weight_decay
        self.save_every = config.save_every
        self.show_progress = show_progress
        if not config.amp:
            self.grad_scaler = None

    @property
    def n_networks(self) -> int:
        return self.train_config.n_networks

    def _rank_share(self, global_batch: int) -> int:
        if not self.is_ddp:
            return global_batch
        world, rank = dist.get_world_size(), dist.get_rank()
        if global_batch < world:
            raise ValueError(f"batch size {global_batch} is smaller than the number of processes ({world})")
        return global_batch // world + (1 if rank < global_batch % world else 0)

    def initialize(self) -> None:
        if self.was_initialized:
            raise RuntimeError("the trainer is already initialised")
        self._set_batch_size_and_oversample()
        cm = self.configuration_manager.configuration
        self.unlabeled_batch_size = self._rank_share(int(cm.get("unlabeled_batch_size", cm["batch_size"])))
        self.num_input_channels = determine_num_input_channels(self.plans_manager, self.configuration_manager,
                                                               self.dataset_json)
        cfg = self.train_config
        self.networks, self.optimizers, self.schedulers = [], [], []
        for k in range(self.n_networks):
            with torch.random.fork_rng(devices=[]):  # different, reproducible init without touching global state
                torch.manual_seed(cfg.seed + k)
                net = self.build_network_architecture(self.plans_manager, self.configuration_manager,
                                                      self.num_input_channels,
                                                      self.label_manager.num_segmentation_heads,
                                                      self.enable_deep_supervision).to(self.device)
            if self._do_i_compile():
                net = torch.compile(net)
            opt = torch.optim.SGD(net.parameters(), cfg.initial_lr, weight_decay=cfg.weight_decay,
                                  momentum=cfg.momentum, nesterov=True)
            if cfg.lr_schedule == "poly":
                sched = PolyLRScheduler(opt, cfg.initial_lr, cfg.epochs)
            else:
                sched = PlateauSchedule(opt, cfg.plateau_factor, cfg.plateau_patience, cfg.plateau_threshold,
                                        cfg.plateau_ema, cfg.min_lr)
            if self.is_ddp:
                net = DDP(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            self.networks.append(net)
            self.optimizers.append(opt)
            self.schedulers.append(sched)
        # nnU-Net's own code (final validation, deep supervision switch, logging) uses these names
        self.network, self.optimizer, self.lr_scheduler = self.networks[0], self.optimizers[0], self.schedulers[0]
        self.loss = self._build_loss()
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        self.was_initialized = True

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        for net in self.networks:
            unwrap(net).decoder.deep_supervision = enabled

    def _loss_on_lists(self, outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.enable_deep_supervision:
            return self.loss(outputs, targets)
        return self.loss(outputs[0], targets[0])

    def _cross_fn(self) -> CrossFn:
        """The loss of a cross term, ``(student outputs, teacher outputs) -> loss``, as ``cps_loss`` says."""
        cfg = self.train_config
        if cfg.cps_loss == "dice_ce":
            return paper_cross_fn(self._loss_on_lists)
        # nnU-Net's deep-supervision weights (its DeepSupervisionWrapper's), so both kinds weigh the scales alike
        weights = tuple(self.loss.weight_factors) if self.enable_deep_supervision else (1.0,)
        return lambda student, teacher: pseudo_label_cross_entropy(student, teacher, weights, cfg.confidence)

    # ------------------------------------------------------------------ data
    def get_dataloaders(self):
        seed = self.train_config.seed + 1000 * (dist.get_rank() if self.is_ddp else 0) + 7919 * self.current_epoch
        # nnU-Net's loaders and augmentations draw from the global numpy/torch generators: seed them per rank
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        loaders = super().get_dataloaders()
        if self.n_networks == 2:
            self.dataloader_unlabeled = self._get_unlabeled_dataloader()
        return loaders

    def _get_unlabeled_dataloader(self):
        folder = unlabeled_folder(self.preprocessed_dataset_folder)
        ids = self.dataset_class.get_identifiers(str(folder)) if folder.is_dir() else []
        if not ids:
            raise FileNotFoundError(f"{folder}: no preprocessed unlabeled cases. CPS needs unlabeled scans: put them "
                                    "in imagesUnlabeled/ and run 'cps3d preprocess' (or train with --mode supervised)")
        dataset = self.dataset_class(str(folder), ids)
        patch_size = self.configuration_manager.patch_size
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        transforms = self.get_training_transforms(
            patch_size, rotation, self._get_deep_supervision_scales(), mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=False,
            foreground_labels=self.label_manager.foreground_labels,
            regions=self.label_manager.foreground_regions if self.label_manager.has_regions else None,
            ignore_label=self.label_manager.ignore_label)
        loader = _UnlabeledDataLoader(dataset, self.unlabeled_batch_size, initial_patch_size, patch_size,
                                      self.label_manager, oversample_foreground_percent=0.0, transforms=transforms)
        n_proc = get_allowed_n_proc_DA()
        if n_proc == 0:
            augmenter = SingleThreadedAugmenter(loader, None)
        else:
            augmenter = NonDetMultiThreadedAugmenter(loader, None, n_proc, max(6, n_proc // 2), None,
                                                     pin_memory=self.device.type == "cuda", wait_time=0.002)
        self.print_to_log_file(f"Unlabeled data: {len(ids)} case(s) in {folder}, batch {self.unlabeled_batch_size} "
                               "per process")
        return augmenter

    # ------------------------------------------------------------------ training
    def _autocast(self):
        if self.device.type == "cuda" and self.train_config.amp:
            return autocast(self.device.type, enabled=True)
        return dummy_context()

    def forward_backward(self, x_l: torch.Tensor, target: list[torch.Tensor], x_u: torch.Tensor | None) -> dict:
        """Accumulate the gradients of the CPS objective for one labeled and one unlabeled batch; no optimizer step.

        Two passes, each running both networks on one batch and calling backward: the labeled batch
        (``L_sup + lambda * L_cps_labeled``), then the unlabeled one (``lambda * L_cps_unlabeled``). The gradients are
        those of the whole objective (the terms only add up), but only one batch's activations are alive at a time,
        and on a CPU two passes on B samples are cheaper than one on 2B. With lambda = 0 the unlabeled terms are only
        evaluated for the log. Under DDP the first pass skips the gradient all-reduce (``no_sync``), so gradients are
        averaged across processes once per iteration. Returns the detached losses: ``loss`` (the objective),
        ``sup``, ``cps`` (unweighted), ``loss_1``, ``loss_2`` (each network's share).
        """
        lam = self.current_lambda
        cross = self._cross_fn()
        unlabeled_backward = x_u is not None and lam > 0
        with contextlib.ExitStack() as stack:
            if self.is_ddp and unlabeled_backward:
                for net in self.networks:
                    stack.enter_context(net.no_sync())
            with self._autocast():
                outs = [as_list(net(x_l)) for net in self.networks]
                t = cps_loss_terms(self._loss_on_lists, outs[0], outs[1], target, cross_fn=cross)
                loss_l = t.supervised + lam * t.cps
            self._backward(loss_l)
        del outs
        stats = {}
        if x_u is not None:
            with self._autocast(), torch.set_grad_enabled(unlabeled_backward):
                outs = [as_list(net(x_u)) for net in self.networks]
                t.cps_unlabeled_1, t.cps_unlabeled_2 = cross_terms(cross, *outs)
            # what the pseudo-labels of the unlabeled batch say (both teachers): the log shows a collapse to background
            per_teacher = [pseudo_label_stats(o, self.train_config.confidence) for o in outs]
            stats = {"pseudo_fg": torch.tensor(np.mean([f for f, _ in per_teacher])),
                     "pseudo_kept": torch.tensor(np.mean([k for _, k in per_teacher]))}
            del outs
            if unlabeled_backward:
                self._backward(lam * (t.cps_unlabeled_1 + t.cps_unlabeled_2))
        l1, l2 = t.network_losses(lam)
        return {k: v.detach() for k, v in {"loss": t.total(lam), "sup": t.supervised, "cps": t.cps, "loss_1": l1,
                                           "loss_2": l2, "sup_1": t.sup_1, "sup_2": t.sup_2, **stats}.items()}

    def _backward(self, loss: torch.Tensor) -> None:
        (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()

    def train_step(self, batch: dict) -> dict:
        x_l = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in (target if isinstance(target, list) else [target])]
        x_u = None
        if self.dataloader_unlabeled is not None:
            x_u = next(self.dataloader_unlabeled)["data"].to(self.device, non_blocking=True)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        losses = self.forward_backward(x_l, target, x_u)
        self._clip_and_step()
        return {k: v.cpu().numpy() for k, v in losses.items()}

    def _clip_and_step(self) -> None:
        """Clip each network's gradient norm and step its optimizer (through the AMP scaler on CUDA)."""
        clip = self.train_config.grad_clip
        for net, opt in zip(self.networks, self.optimizers):
            if self.grad_scaler is not None:
                self.grad_scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        for opt in self.optimizers:
            if self.grad_scaler is not None:
                self.grad_scaler.step(opt)
            else:
                opt.step()
        if self.grad_scaler is not None:
            self.grad_scaler.update()

    def on_train_epoch_start(self) -> None:
        for net in self.networks:
            net.train()
        cfg = self.train_config
        if cfg.lr_schedule == "poly":
            for sched in self.schedulers:
                sched.step(self.current_epoch)
        self.current_lambda = cps_lambda(self.current_epoch, cfg.lambda_max, cfg.ramp_epochs, cfg.lambda_start_epoch) \
            if self.n_networks == 2 else 0.0
        self.print_to_log_file("")
        self.print_to_log_file(f"Epoch {self.current_epoch}")
        lrs = [opt.param_groups[0]["lr"] for opt in self.optimizers]
        self.print_to_log_file(f"Current learning rate: {', '.join(f'{lr:.5g}' for lr in lrs)}; "
                               f"CPS weight lambda: {self.current_lambda:.4f}")
        self.logger.log("lrs", lrs[0], self.current_epoch)
        if self.n_networks == 2:
            self.logger.log("lrs_2", lrs[1], self.current_epoch)
        self.logger.log("lambda", self.current_lambda, self.current_epoch)

    def _mean_over_ranks(self, values: np.ndarray) -> float:
        if self.is_ddp:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, values)
            values = np.concatenate([np.atleast_1d(g) for g in gathered])
        return float(np.mean(values))

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        out = collate_outputs(train_outputs)
        means = {k: self._mean_over_ranks(np.asarray(v)) for k, v in out.items()}
        e = self.current_epoch
        self.logger.log("train_losses", means["loss"], e)
        self.logger.log("train_sup_losses", means["sup"], e)
        if self.n_networks == 2:
            self.logger.log("train_cps_losses", means["cps"], e)
            self.logger.log("train_losses_net1", means["loss_1"], e)
            self.logger.log("train_losses_net2", means["loss_2"], e)
            nan = float("nan")
            self.logger.log("pseudo_fg_fraction", means.get("pseudo_fg", nan), e)
            self.logger.log("pseudo_confident_fraction", means.get("pseudo_kept", nan), e)
        if self.train_config.lr_schedule == "plateau":
            if self.n_networks == 1:
                per_net = [means["loss"]]
            elif self.train_config.plateau_on == "supervised":
                per_net = [means["sup_1"], means["sup_2"]]
            else:
                per_net = [means["loss_1"], means["loss_2"]]
            for sched, value in zip(self.schedulers, per_net):
                sched.step(value)

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        for net in self.networks:
            net.eval()

    def _hard_counts(self, output: torch.Tensor, target: torch.Tensor, probabilities: bool = False) -> dict:
        """True/false positive and false negative voxel counts per foreground class of one output (logits, or
        probabilities when ``probabilities``), as nnU-Net's online pseudo-Dice counts them."""
        axes = [0] + list(range(2, output.ndim))
        if self.label_manager.has_regions:
            onehot = ((output > 0.5) if probabilities else (torch.sigmoid(output) > 0.5)).long()
        else:
            seg = output.argmax(1)[:, None]
            onehot = torch.zeros(output.shape, device=output.device, dtype=torch.float16)
            onehot.scatter_(1, seg, 1)
        mask = None
        if self.label_manager.has_ignore_label:
            if not self.label_manager.has_regions:
                mask = (target != self.label_manager.ignore_label).float()
                target = torch.where(target == self.label_manager.ignore_label, torch.zeros_like(target), target)
            else:
                mask = (~target[:, -1:].bool()).float()
                target = target[:, :-1]
        tp, fp, fn, _ = get_tp_fp_fn_tn(onehot, target, axes=axes, mask=mask)
        tp, fp, fn = (t.detach().cpu().numpy() for t in (tp, fp, fn))
        if not self.label_manager.has_regions:
            tp, fp, fn = tp[1:], fp[1:], fn[1:]
        return {"tp": tp, "fp": fp, "fn": fn}

    def validation_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in (target if isinstance(target, list) else [target])]
        with self._autocast():
            outs = [net(data) for net in self.networks]
            outs = [o if isinstance(o, (list, tuple)) else [o] for o in outs]
            loss = self._loss_on_lists(list(outs[0]), target)
        top = [o[0].float() for o in outs]
        result = {"loss": loss.detach().cpu().numpy()}
        for key, value in self._hard_counts(top[0], target[0]).items():
            result[f"{key}_hard"] = value
        if self.n_networks == 2:
            act = torch.sigmoid if self.label_manager.has_regions else (lambda t: torch.softmax(t, 1))
            average = (act(top[0]) + act(top[1])) / 2
            for suffix, out, probs in (("_2", top[1], False), ("_avg", average, True)):
                for key, value in self._hard_counts(out, target[0], probs).items():
                    result[f"{key}_hard{suffix}"] = value
        return result

    def _dice_per_class(self, outputs: dict, suffix: str) -> list[float]:
        tp, fp, fn = (np.sum(outputs[f"{k}_hard{suffix}"], 0) for k in ("tp", "fp", "fn"))
        if self.is_ddp:
            parts = []
            for arr in (tp, fp, fn):
                gathered: list[Any] = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, arr)
                parts.append(np.sum(gathered, 0))
            tp, fp, fn = parts
        with np.errstate(invalid="ignore", divide="ignore"):
            return [float(v) for v in 2 * tp / (2 * tp + fp + fn)]

    def on_validation_epoch_end(self, val_outputs: list[dict]) -> None:
        e = self.current_epoch
        n_classes = len(self.label_manager.foreground_regions if self.label_manager.has_regions
                        else self.label_manager.foreground_labels)
        if not val_outputs:  # --val-iters 0: nothing measured this epoch
            nan = [float("nan")] * n_classes
            per = {"": nan, "_2": nan, "_avg": nan}
            loss = float("nan")
        else:
            out = collate_outputs(val_outputs)
            per = {s: self._dice_per_class(out, s) for s in ([""] + (["_2", "_avg"] if self.n_networks == 2 else []))}
            loss = self._mean_over_ranks(np.asarray(out["loss"]))
        with np.errstate(invalid="ignore"):
            means = {s: float(np.nanmean(v)) if not np.all(np.isnan(v)) else float("nan") for s, v in per.items()}
        self.logger.log("mean_fg_dice", means[""], e)
        self.logger.log("dice_per_class_or_region", per[""], e)
        self.logger.log("val_losses", loss, e)
        if self.n_networks == 2:
            self.logger.log("mean_fg_dice_net2", means["_2"], e)
            self.logger.log("mean_fg_dice_avg", means["_avg"], e)
            self.logger.log("dice_per_class_net2", per["_2"], e)
            self.logger.log("dice_per_class_avg", per["_avg"], e)

    # ------------------------------------------------------------------ epochs, checkpoints, plots
    def on_train_start(self) -> None:
        super().on_train_start()
        world = dist.get_world_size() if self.is_ddp else 1
        cm = self.configuration_manager.configuration
        lab, unl = int(cm["batch_size"]), int(cm.get("unlabeled_batch_size", cm["batch_size"]))
        msg = f"Effective batch size: {self.batch_size} labeled per process x {world} process(es) (plan: {lab})"
        if self.n_networks == 2:
            msg += f"; unlabeled {self.unlabeled_batch_size} per process (plan: {unl}); two networks"
        self.print_to_log_file(msg)
        if self.local_rank == 0:
            write_json(os.path.join(self.output_folder, "cps3d_config.json"), {
                "cps3d_version": __version__,
                "trainer": type(self).__name__,
                "dataset": self.plans_manager.dataset_name,
                "plans_name": self.plans_manager.plans_name,
                "configuration": self.configuration_name,
                "fold": self.fold,
                "train_config": self.train_config.to_dict(),
                "device": str(self.device),
                "world_size": world,
                "batch_size_per_process": self.batch_size,
                "unlabeled_batch_size_per_process": self.unlabeled_batch_size if self.n_networks == 2 else 0,
                "plan_batch_size": lab,
                "plan_unlabeled_batch_size": unl,
                "n_proc_data_augmentation": get_allowed_n_proc_DA(),
                "torch": torch.__version__,
                "python": sys.version.split()[0],
                "host": platform.node(),
            })

    def _time_is_up(self, started: float) -> bool:
        """Whether ``max_minutes`` has passed (rank 0 decides for every process, so that all stop together)."""
        limit = self.train_config.max_minutes
        if limit is None:
            return False
        decision = [time() - started >= 60 * limit]
        if self.is_ddp:
            dist.broadcast_object_list(decision, src=0)
        return bool(decision[0])

    def run_training(self) -> None:
        self.on_train_start()
        show = self.show_progress and self.local_rank == 0
        started, first = time(), self.current_epoch
        for epoch in range(self.current_epoch, self.num_epochs):
            if epoch > first and self._time_is_up(started):
                self.print_to_log_file(f"Time limit of {self.train_config.max_minutes:g} minutes reached: stopping "
                                       f"after {epoch} epoch(s) instead of {self.num_epochs}")
                self.num_epochs = epoch
                break
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = []
            for _ in tqdm(range(self.num_iterations_per_epoch), desc=f"Epoch {epoch} (of 0-{self.num_epochs - 1})",
                          disable=not show, leave=False, dynamic_ncols=True):
                outputs.append(self.train_step(next(self.dataloader_train)))
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val))
                               for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
        self.on_train_end()

    def on_epoch_end(self) -> None:
        e = self.current_epoch
        self.logger.log("epoch_end_timestamps", time(), e)
        log = self.logger.get_value
        self.print_to_log_file(f"train_loss {log('train_losses', e):.4f} (supervised {log('train_sup_losses', e):.4f}"
                               + (f", CPS {log('train_cps_losses', e):.4f})" if self.n_networks == 2 else ")"))
        if self.n_networks == 2:
            self.print_to_log_file(f"Unlabeled pseudo-labels: {log('pseudo_fg_fraction', e):.4f} of voxels foreground, "
                                   f"{log('pseudo_confident_fraction', e):.4f} confident")
        self.print_to_log_file(f"val_loss {log('val_losses', e):.4f}")
        self.print_to_log_file("Pseudo dice network 1", [round(float(i), 4) for i in log("dice_per_class_or_region", e)])
        if self.n_networks == 2:
            self.print_to_log_file("Pseudo dice network 2", [round(float(i), 4) for i in log("dice_per_class_net2", e)])
            self.print_to_log_file("Pseudo dice average  ", [round(float(i), 4) for i in log("dice_per_class_avg", e)])
        self.print_to_log_file(f"Epoch time: {log('epoch_end_timestamps', e) - log('epoch_start_timestamps', e):.2f} s")
        if (e + 1) % self.save_every == 0 and e != self.num_epochs - 1:
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_latest.pth"))
        ema = log("ema_fg_dice", e)
        if np.isfinite(ema) and (self._best_ema is None or ema > self._best_ema):
            self._best_ema = ema
            self.print_to_log_file(f"New best EMA pseudo Dice (network 1): {np.round(ema, 4)}")
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_best.pth"))
        if self.local_rank == 0:
            plot_progress(self.logger.get_checkpoint(), os.path.join(self.output_folder, "progress.png"))
        self.current_epoch += 1

    def on_train_end(self) -> None:
        super().on_train_end()
        if isinstance(self.dataloader_unlabeled, NonDetMultiThreadedAugmenter):
            self.dataloader_unlabeled._finish()
        self.dataloader_unlabeled = None

    def checkpoint_dict(self) -> dict:
        """Everything needed to resume or to predict: nnU-Net's checkpoint keys (network 1 under its names, so
        nnU-Net's tools read it as a single network) plus network 2, its optimizer and the schedules."""
        nets = [unwrap(n) for n in self.networks]
        ckpt = {
            "network_weights": nets[0].state_dict(),
            "optimizer_state": self.optimizers[0].state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": type(self).__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            "lr_scheduler_states": [s.state_dict() for s in self.schedulers],
            "cps3d": {"version": __version__, "mode": self.mode, "n_networks": self.n_networks,
                      "train_config": self.train_config.to_dict()},
        }
        if self.n_networks == 2:
            ckpt["network_weights_2"] = nets[1].state_dict()
            ckpt["optimizer_state_2"] = self.optimizers[1].state_dict()
        return ckpt

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        ckpt = self.checkpoint_dict()
        with atomic_path(filename) as tmp:  # a crash while saving keeps the previous checkpoint
            torch.save(ckpt, tmp)

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        if not self.was_initialized:
            self.initialize()
        ckpt = filename_or_checkpoint
        if isinstance(ckpt, (str, os.PathLike)):
            ckpt = torch.load(ckpt, map_location=self.device, weights_only=False)
        meta = ckpt.get("cps3d")
        if meta is None or meta.get("mode") != self.mode:
            found = meta.get("mode") if meta else "a checkpoint not written by cps3d"
            raise ValueError(f"cannot resume {self.mode!r} training from {found!r}")
        weights = [ckpt["network_weights"]] + ([ckpt["network_weights_2"]] if self.n_networks == 2 else [])
        opt_states = [ckpt["optimizer_state"]] + ([ckpt["optimizer_state_2"]] if self.n_networks == 2 else [])
        for net, w in zip(self.networks, weights):
            unwrap(net).load_state_dict({k[7:] if k.startswith("module.") else k: v for k, v in w.items()})
        for opt, s in zip(self.optimizers, opt_states):
            opt.load_state_dict(s)
        saved_schedule = meta.get("train_config", {}).get("lr_schedule", self.train_config.lr_schedule)
        if saved_schedule != self.train_config.lr_schedule:
            raise ValueError(f"lr_schedule: the checkpoint was trained with {saved_schedule!r}, this trainer is "
                             f"configured with {self.train_config.lr_schedule!r}")
        for sched, s in zip(self.schedulers, ckpt["lr_scheduler_states"]):
            sched.load_state_dict(s)
        if self.grad_scaler is not None and ckpt.get("grad_scaler_state") is not None:
            self.grad_scaler.load_state_dict(ckpt["grad_scaler_state"])
        self.current_epoch = ckpt["current_epoch"]
        if self.train_config.lr_schedule == "poly" and self.current_epoch < self.num_epochs:
            for sched in self.schedulers:  # another number of epochs: go on from the current lr, not from 0
                sched.initial_lr = extended_poly_initial_lr(sched.initial_lr, sched.max_steps, self.num_epochs,
                                                            self.current_epoch, sched.exponent)
                sched.max_steps = self.num_epochs
        self.logger.load_checkpoint(ckpt["logging"])
        self._best_ema = ckpt["_best_ema"]
        self.inference_allowed_mirroring_axes = ckpt.get("inference_allowed_mirroring_axes",
                                                         self.inference_allowed_mirroring_axes)


class SupervisedTrainer(CPSTrainer):
    """The baseline of the paper's ablation: one network, the same data pipeline and schedules, no CPS term."""

    mode = "supervised"

    def forward_backward(self, x_l: torch.Tensor, target: list[torch.Tensor], x_u: torch.Tensor | None) -> dict:
        with self._autocast():
            loss = self._loss_on_lists(as_list(self.networks[0](x_l)), target)
        self._backward(loss)
        return {"loss": loss.detach(), "sup": loss.detach()}


TRAINERS = {"cps": CPSTrainer, "supervised": SupervisedTrainer}
