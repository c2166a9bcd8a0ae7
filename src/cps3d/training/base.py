"""The base of cps3d's trainers: nnU-Net's trainer holding N networks, each with its own optimizer and schedule.

``MultiNetworkTrainer`` subclasses ``nnUNetTrainer`` and overrides what holding several networks changes: building
them with different, reproducible initialisations and one optimizer and learning-rate schedule each, the optimizer
step (gradient clipping per network, AMP scaler), validation of each network and of their average, logging and
plotting one curve per network, and checkpoints holding every network. What a training step computes is a
subclass's ``forward_backward``: ``SupervisedTrainer`` (one network, the paper's baseline) and ``CPSTrainer`` (two
networks and the cross terms) in ``cps3d.training.trainer``. Data loading, augmentation, patch sampling, Dice+CE with
deep supervision, the cross-validation split and the final validation are nnU-Net's.

Traps of the base class handled here: its checkpoints store only ``self.network`` (network 1 keeps nnU-Net's keys,
network k > 1 is stored under ``network_weights_k``/``optimizer_state_k``); its logger accepts only keys it knows (we
register ours) and plots exactly one value per key and epoch; under DDP it moves ranks to CUDA and wraps with
``device_ids`` (we keep the given device so that gloo on CPU works).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from time import time
from typing import Any

import numpy as np
import torch
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
from cps3d.training.config import TrainConfig
from cps3d.training.progress import plot_progress
from cps3d.training.schedules import PlateauSchedule, extended_poly_initial_lr, final_decay_factor
from cps3d.training.validation import dice_per_class, hard_counts, mean_over_ranks


def unwrap(module: torch.nn.Module) -> Any:
    """The plain network inside DDP and torch.compile wrappers."""
    if isinstance(module, DDP):
        module = module.module
    if isinstance(module, OptimizedModule):
        module = module._orig_mod
    return module


class MultiNetworkTrainer(nnUNetTrainer):
    """nnU-Net's trainer with ``n_networks`` networks, optimizers and learning-rate schedules (see module docstring).

    Construct it like ``nnUNetTrainer`` (nnU-Net records the constructor's arguments in checkpoints, so the signature
    is unchanged), then call ``configure(TrainConfig(...))`` before training; ``cps3d.training.run.build_trainer``
    does both. Subclasses set ``mode`` (the ``TrainConfig.mode`` they train) and ``n_networks``, and implement
    ``forward_backward``.
    """

    mode: str
    n_networks: int

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
        # the unlabeled batch per process and the weight lambda of the unlabeled terms: none without unlabeled data
        # (lambda is logged all the same, so that every run's curves line up with CPS's)
        self.unlabeled_batch_size = 0
        self.current_lambda = 0.0
        self.show_progress = True
        self._train_started = time()  # run_training's start: max_minutes and the final decay count from it
        self._scheduled_lrs: list[float] = []  # each optimizer's rate from its schedule, before the final decay
        logged = self.logger.local_logger.my_fantastic_logging
        for key in self.log_keys():
            logged.setdefault(key, [])

    def log_keys(self) -> tuple[str, ...]:
        """The keys logged once per epoch in addition to nnU-Net's own: one curve per network and their average."""
        n = self.n_networks
        per_network = ((*(f"train_losses_net{k}" for k in range(1, n + 1)),
                        *(f"{key}{k}" for k in range(2, n + 1)
                          for key in ("lrs_", "mean_fg_dice_net", "dice_per_class_net")),
                        "mean_fg_dice_avg", "dice_per_class_avg") if n > 1 else ())
        return ("train_sup_losses", "lambda", *per_network)

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

    def initialize(self) -> None:
        if self.was_initialized:
            raise RuntimeError("the trainer is already initialised")
        self._set_batch_size_and_oversample()
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
                sched = PlateauSchedule(opt, factor=cfg.plateau_factor, patience=cfg.plateau_patience,
                                        threshold=cfg.plateau_threshold, ema_alpha=cfg.plateau_ema, min_lr=cfg.min_lr)
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

    # ------------------------------------------------------------------ data
    def get_dataloaders(self):
        seed = self.train_config.seed + 1000 * (dist.get_rank() if self.is_ddp else 0) + 7919 * self.current_epoch
        # nnU-Net's loaders and augmentations draw from the global numpy/torch generators: seed them per rank
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        return super().get_dataloaders()

    def random_batch(self, batch_size: int | None = None, generator: torch.Generator | None = None) -> dict:
        """A labeled batch of random data, as ``train_step`` takes it, on the trainer's device: ``data`` of shape
        (batch_size, input channels, *patch size) from a standard normal, ``target`` one (batch_size, 1, *shape)
        float tensor of random labels per deep-supervision scale (the patch size times the scale, rounded as
        nnU-Net's downsampling does). ``batch_size`` defaults to this process's labeled batch; the trainer must be
        initialised. For timing a step without data loading, and for tests."""
        if self.label_manager.has_regions:
            raise ValueError("random_batch: region-based plans take one-hot targets; only label maps are drawn")
        n = self.batch_size if batch_size is None else batch_size
        patch = tuple(int(p) for p in self.configuration_manager.patch_size)
        scales = self._get_deep_supervision_scales() or [[1.0] * len(patch)]
        data = torch.randn((n, self.num_input_channels, *patch), generator=generator)
        target = [torch.randint(0, self.label_manager.num_segmentation_heads,
                                (n, 1, *[max(1, round(p * s)) for p, s in zip(patch, scale)]),
                                generator=generator).float() for scale in scales]
        return {"data": data.to(self.device), "target": [t.to(self.device) for t in target]}

    def prepare_synthetic_steps(self) -> dict:
        """Set the trainer up to time ``train_step`` without its data loaders and return the labeled batch to pass
        it (:meth:`random_batch`). Trainers with other data streams fix those too (``CPSTrainer``)."""
        return self.random_batch()

    # ------------------------------------------------------------------ training
    def _autocast(self):
        if self.device.type == "cuda" and self.train_config.amp:
            return autocast(self.device.type, enabled=True)
        return dummy_context()

    def forward_backward(self, x_l: torch.Tensor, target: list[torch.Tensor]) -> dict:
        """Accumulate the gradients of the training objective for one labeled batch (``x_l``, ``target`` per
        deep-supervision scale); no optimizer step. Returns the detached losses: at least ``loss`` (the objective)
        and ``sup`` (its supervised part); with several networks also ``loss_k`` and ``sup_k`` for network k."""
        raise NotImplementedError

    def _forward_backward_step(self, x_l: torch.Tensor, target: list[torch.Tensor]) -> dict:
        """The training step's ``forward_backward`` call; trainers that draw more data per step override this."""
        return self.forward_backward(x_l, target)

    def _backward(self, loss: torch.Tensor) -> None:
        (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()

    def train_step(self, batch: dict) -> dict:
        x_l = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in (target if isinstance(target, list) else [target])]
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        losses = self._forward_backward_step(x_l, target)
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

    def lambda_at(self, epoch: int) -> float:
        """The weight of the unlabeled terms in ``epoch``: 0 here, CPS's ramp in ``CPSTrainer``."""
        return 0.0

    def on_train_epoch_start(self) -> None:
        for net in self.networks:
            net.train()
        if self.train_config.lr_schedule == "poly":
            for sched in self.schedulers:
                sched.step(self.current_epoch)
        # the final decay scales the schedule's rate for this epoch only: on_train_epoch_end puts the schedule's own
        # back before the plateau schedule sees it (it lowers the rate it finds) and before the checkpoint
        self._scheduled_lrs = [opt.param_groups[0]["lr"] for opt in self.optimizers]
        factor = final_decay_factor(self.run_progress(), self.train_config.lr_final_decay)
        self._set_lrs([lr * factor for lr in self._scheduled_lrs])
        self.current_lambda = self.lambda_at(self.current_epoch)
        self.print_to_log_file("")
        self.print_to_log_file(f"Epoch {self.current_epoch}")
        lrs = [opt.param_groups[0]["lr"] for opt in self.optimizers]
        self.print_to_log_file(f"Current learning rate: {', '.join(f'{lr:.5g}' for lr in lrs)}; "
                               f"CPS weight lambda: {self.current_lambda:.4f}")
        for k, lr in enumerate(lrs, start=1):  # nnU-Net's key for network 1, lrs_k for network k
            self.logger.log("lrs" if k == 1 else f"lrs_{k}", lr, self.current_epoch)
        self.logger.log("lambda", self.current_lambda, self.current_epoch)

    def log_train_means(self, means: dict[str, float], epoch: int) -> None:
        """Log the epoch's mean training losses (``means``: the keys ``forward_backward`` returns)."""
        self.logger.log("train_losses", means["loss"], epoch)
        self.logger.log("train_sup_losses", means["sup"], epoch)
        if self.n_networks > 1:
            for k in range(1, self.n_networks + 1):
                self.logger.log(f"train_losses_net{k}", means[f"loss_{k}"], epoch)

    def _set_lrs(self, lrs: Sequence[float]) -> None:
        """Set each optimizer's learning rate (every parameter group of optimizer k to ``lrs[k]``)."""
        for opt, lr in zip(self.optimizers, lrs):
            for group in opt.param_groups:
                group["lr"] = lr

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        out = collate_outputs(train_outputs)
        means = {k: mean_over_ranks(np.asarray(v), self.is_ddp) for k, v in out.items()}
        self.log_train_means(means, self.current_epoch)
        self._set_lrs(self._scheduled_lrs)
        if self.train_config.lr_schedule == "plateau":
            # each network's schedule watches its own loss; a single network's is the objective itself
            key = "sup" if self.train_config.plateau_on == "supervised" else "loss"
            for k, sched in enumerate(self.schedulers, start=1):
                sched.step(means.get(f"{key}_{k}", means[key]))

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        for net in self.networks:
            net.eval()

    def _validation_suffixes(self) -> list[str]:
        """Suffixes of the validation counts: "" network 1, "_k" network k, "_avg" the average of all networks."""
        n = self.n_networks
        return [""] + [f"_{k}" for k in range(2, n + 1)] + (["_avg"] if n > 1 else [])

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
        counted = [(suffix, out, False) for suffix, out in zip(self._validation_suffixes(), top)]
        if len(top) > 1:
            act = torch.sigmoid if self.label_manager.has_regions else (lambda t: torch.softmax(t, 1))
            probabilities = [act(t) for t in top]
            counted.append(("_avg", sum(probabilities[1:], probabilities[0]) / len(top), True))
        for suffix, out, probs in counted:
            for key, value in hard_counts(out, target[0], self.label_manager, probs).items():
                result[f"{key}_hard{suffix}"] = value
        return result

    def on_validation_epoch_end(self, val_outputs: list[dict]) -> None:
        e = self.current_epoch
        suffixes = self._validation_suffixes()
        n_classes = len(self.label_manager.foreground_regions if self.label_manager.has_regions
                        else self.label_manager.foreground_labels)
        if not val_outputs:  # --val-iters 0: nothing measured this epoch
            per = {s: [float("nan")] * n_classes for s in suffixes}
            loss = float("nan")
        else:
            out = collate_outputs(val_outputs)
            per = {s: dice_per_class(out, s, self.is_ddp) for s in suffixes}
            loss = mean_over_ranks(np.asarray(out["loss"]), self.is_ddp)
        with np.errstate(invalid="ignore"):
            means = {s: float(np.nanmean(v)) if not np.all(np.isnan(v)) else float("nan") for s, v in per.items()}
        self.logger.log("mean_fg_dice", means[""], e)
        self.logger.log("dice_per_class_or_region", per[""], e)
        self.logger.log("val_losses", loss, e)
        for s in suffixes[1:]:
            name = "_avg" if s == "_avg" else f"_net{s[1:]}"
            self.logger.log(f"mean_fg_dice{name}", means[s], e)
            self.logger.log(f"dice_per_class{name}", per[s], e)

    # ------------------------------------------------------------------ epochs, checkpoints, plots
    def batch_summary(self, world: int) -> str:
        """The log line on the batch sizes this run trains with."""
        lab = int(self.configuration_manager.configuration["batch_size"])
        return f"Effective batch size: {self.batch_size} labeled per process x {world} process(es) (plan: {lab})"

    def on_train_start(self) -> None:
        super().on_train_start()
        world = dist.get_world_size() if self.is_ddp else 1
        cm = self.configuration_manager.configuration
        lab, unl = int(cm["batch_size"]), int(cm.get("unlabeled_batch_size", cm["batch_size"]))
        self.print_to_log_file(self.batch_summary(world))
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
                "unlabeled_batch_size_per_process": self.unlabeled_batch_size,
                "plan_batch_size": lab,
                "plan_unlabeled_batch_size": unl,
                "n_proc_data_augmentation": get_allowed_n_proc_DA(),
                "torch": torch.__version__,
                "python": sys.version.split()[0],
                "host": platform.node(),
            })

    def _time_share(self) -> float:
        """The share of ``max_minutes`` this run has trained so far (0 without a limit); rank 0's for every process,
        so that all stop together and train with the same learning rate."""
        limit = self.train_config.max_minutes
        if limit is None:
            return 0.0
        share = [(time() - self._train_started) / (60 * limit)]
        if self.is_ddp:
            dist.broadcast_object_list(share, src=0)
        return float(share[0])

    def run_progress(self) -> float:
        """How far through the run the current epoch starts: its epoch over ``epochs`` or, with ``max_minutes``, the
        share of the time spent if further on."""
        return max(self.current_epoch / self.num_epochs, self._time_share())

    def run_training(self) -> None:
        self.on_train_start()
        show = self.show_progress and self.local_rank == 0
        self._train_started, first = time(), self.current_epoch
        for epoch in range(self.current_epoch, self.num_epochs):
            if epoch > first and self._time_share() >= 1:
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

    def loss_summary(self, epoch: int) -> dict[str, float]:
        """The parts of the epoch's training loss named in the log, beside the total."""
        return {"supervised": self.logger.get_value("train_sup_losses", epoch)}

    def train_summary(self, epoch: int) -> list[str]:
        """The log lines on the epoch's training."""
        parts = ", ".join(f"{name} {value:.4f}" for name, value in self.loss_summary(epoch).items())
        return [f"train_loss {self.logger.get_value('train_losses', epoch):.4f} ({parts})"]

    def on_epoch_end(self) -> None:
        e = self.current_epoch
        self.logger.log("epoch_end_timestamps", time(), e)
        log = self.logger.get_value
        for line in self.train_summary(e):
            self.print_to_log_file(line)
        self.print_to_log_file(f"val_loss {log('val_losses', e):.4f}")
        self.print_to_log_file("Pseudo dice network 1", [round(float(i), 4) for i in log("dice_per_class_or_region", e)])
        for k in range(2, self.n_networks + 1):
            self.print_to_log_file(f"Pseudo dice network {k}",
                                   [round(float(i), 4) for i in log(f"dice_per_class_net{k}", e)])
        if self.n_networks > 1:
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

    def checkpoint_dict(self) -> dict:
        """Everything needed to resume or to predict: nnU-Net's checkpoint keys (network 1 under its names, so
        nnU-Net's tools read it as a single network) plus network k > 1 and its optimizer, and the schedules."""
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
        for k in range(2, self.n_networks + 1):
            ckpt[f"network_weights_{k}"] = nets[k - 1].state_dict()
            ckpt[f"optimizer_state_{k}"] = self.optimizers[k - 1].state_dict()
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
        suffixes = [""] + [f"_{k}" for k in range(2, self.n_networks + 1)]
        for net, opt, s in zip(self.networks, self.optimizers, suffixes):
            weights = ckpt[f"network_weights{s}"]
            unwrap(net).load_state_dict({k[7:] if k.startswith("module.") else k: v for k, v in weights.items()})
            opt.load_state_dict(ckpt[f"optimizer_state{s}"])
        saved_schedule = meta.get("train_config", {}).get("lr_schedule", self.train_config.lr_schedule)
        if saved_schedule != self.train_config.lr_schedule:
            raise ValueError(f"lr_schedule: the checkpoint was trained with {saved_schedule!r}, this trainer is "
                             f"configured with {self.train_config.lr_schedule!r}")
        for sched, state in zip(self.schedulers, ckpt["lr_scheduler_states"]):
            sched.load_state_dict(state)
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
