"""cps3d's two trainers: the supervised baseline (one network) and the CPS trainer (two networks, unlabeled data).

Both are :class:`~cps3d.training.base.MultiNetworkTrainer` (nnU-Net's trainer holding N networks with their
optimizers, schedules, validation, logging and checkpoints). ``SupervisedTrainer`` is N = 1 with nnU-Net's Dice+CE:
the baseline of the paper's ablation. ``CPSTrainer`` is N = 2 and adds only what cross pseudo supervision needs: a
second (unlabeled) data loader with nnU-Net's augmentation, the weight lambda and its ramp, the training step with
the cross terms (DESIGN section 4, maths in ``cps3d.training.losses``) and the curves of the CPS loss and of what
the pseudo-labels say.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from torch import distributed as dist

from cps3d.preprocessing import unlabeled_folder
from cps3d.training.base import MultiNetworkTrainer
from cps3d.training.losses import (
    CrossFn,
    as_list,
    cps_loss_terms,
    cross_terms,
    paper_cross_fn,
    pseudo_label_cross_entropy,
    pseudo_label_stats,
)
from cps3d.training.mixing import box_masks, mix, mix_outputs
from cps3d.training.schedules import cps_lambda


class SupervisedTrainer(MultiNetworkTrainer):
    """The baseline of the paper's ablation: one network, the same data pipeline and schedules, no CPS term."""

    mode = "supervised"
    n_networks = 1

    def forward_backward(self, x_l: torch.Tensor, target: list[torch.Tensor]) -> dict:
        with self._autocast():
            loss = self._loss_on_lists(as_list(self.networks[0](x_l)), target)
        self._backward(loss)
        return {"loss": loss.detach(), "sup": loss.detach()}


class _UnlabeledDataLoader(nnUNetDataLoader):
    """nnU-Net's loader on unlabeled cases: random patches only (there are no labels to oversample or to ignore)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.has_ignore = False


class CPSTrainer(MultiNetworkTrainer):
    """Two sibling networks trained with Dice+CE supervision plus cross pseudo supervision (see module docstring)."""

    mode = "cps"
    n_networks = 2

    def __init__(self, plans: dict, configuration: str, fold: int | str, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.dataloader_unlabeled: Any = None
        self._mix_gen: torch.Generator | None = None  # CutMix boxes (``cutmix``), created on first use

    def log_keys(self) -> tuple[str, ...]:
        return (*super().log_keys(), "train_cps_losses", "pseudo_fg_fraction", "pseudo_confident_fraction")

    def _rank_share(self, global_batch: int) -> int:
        if not self.is_ddp:
            return global_batch
        world, rank = dist.get_world_size(), dist.get_rank()
        if global_batch < world:
            raise ValueError(f"batch size {global_batch} is smaller than the number of processes ({world})")
        return global_batch // world + (1 if rank < global_batch % world else 0)

    def initialize(self) -> None:
        super().initialize()
        cm = self.configuration_manager.configuration
        self.unlabeled_batch_size = self._rank_share(int(cm.get("unlabeled_batch_size", cm["batch_size"])))

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
        loaders = super().get_dataloaders()
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

    def repeat_unlabeled(self, data: torch.Tensor | None = None, lam: float | None = None) -> torch.Tensor:
        """For timing steps without loading: the unlabeled stream yields ``data`` at every step (default: random data
        of the plan's unlabeled batch and patch size) and lambda is ``lam`` (default ``lambda_max``, so that the
        unlabeled pass runs its backward, as in most of training). Returns the batch."""
        if data is None:
            data = self.random_batch(self.unlabeled_batch_size)["data"]
        self.dataloader_unlabeled = itertools.repeat({"data": data})
        self.current_lambda = self.train_config.lambda_max if lam is None else lam
        return data

    def prepare_synthetic_steps(self) -> dict:
        self.repeat_unlabeled()
        return super().prepare_synthetic_steps()

    # ------------------------------------------------------------------ training
    def lambda_at(self, epoch: int) -> float:
        cfg = self.train_config
        return cps_lambda(epoch, cfg.lambda_max, cfg.ramp_epochs, cfg.lambda_start_epoch)

    def forward_backward(self, x_l: torch.Tensor, target: list[torch.Tensor],
                         x_u: torch.Tensor | None = None) -> dict:
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
            if unlabeled_backward and self.train_config.cutmix:
                # the teachers label the unmixed batch; the students learn on the mixed one (cps3d.training.mixing)
                with self._autocast(), torch.no_grad():
                    outs = [as_list(net(x_u)) for net in self.networks]
                mask = box_masks(x_u.shape[0], x_u.shape[2:], self._mixing_generator())
                with self._autocast():
                    students = [as_list(net(mix(x_u, mask))) for net in self.networks]
                    teachers = [mix_outputs(o, mask) for o in outs]
                    t.cps_unlabeled_1 = cross(students[0], teachers[1])
                    t.cps_unlabeled_2 = cross(students[1], teachers[0])
                del students, teachers
            else:
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

    def _mixing_generator(self) -> torch.Generator:
        """The CutMix boxes' own generator, seeded per run and rank (the data loaders' generators stay untouched)."""
        if self._mix_gen is None:
            rank = dist.get_rank() if self.is_ddp else 0
            self._mix_gen = torch.Generator().manual_seed(self.train_config.seed + 1000 * rank + 17)
        return self._mix_gen

    def _forward_backward_step(self, x_l: torch.Tensor, target: list[torch.Tensor]) -> dict:
        x_u = None
        if self.dataloader_unlabeled is not None:
            x_u = next(self.dataloader_unlabeled)["data"].to(self.device, non_blocking=True)
        return self.forward_backward(x_l, target, x_u)

    def log_train_means(self, means: dict[str, float], epoch: int) -> None:
        super().log_train_means(means, epoch)
        nan = float("nan")
        self.logger.log("train_cps_losses", means["cps"], epoch)
        self.logger.log("pseudo_fg_fraction", means.get("pseudo_fg", nan), epoch)
        self.logger.log("pseudo_confident_fraction", means.get("pseudo_kept", nan), epoch)

    # ------------------------------------------------------------------ epochs
    def batch_summary(self, world: int) -> str:
        cm = self.configuration_manager.configuration
        unl = int(cm.get("unlabeled_batch_size", cm["batch_size"]))
        return (super().batch_summary(world)
                + f"; unlabeled {self.unlabeled_batch_size} per process (plan: {unl}); two networks")

    def loss_summary(self, epoch: int) -> dict[str, float]:
        return {**super().loss_summary(epoch), "CPS": self.logger.get_value("train_cps_losses", epoch)}

    def train_summary(self, epoch: int) -> list[str]:
        log = self.logger.get_value
        return [*super().train_summary(epoch),
                f"Unlabeled pseudo-labels: {log('pseudo_fg_fraction', epoch):.4f} of voxels foreground, "
                f"{log('pseudo_confident_fraction', epoch):.4f} confident"]

    def on_train_end(self) -> None:
        super().on_train_end()
        if isinstance(self.dataloader_unlabeled, NonDetMultiThreadedAugmenter):
            self.dataloader_unlabeled._finish()
        self.dataloader_unlabeled = None


TRAINERS: dict[str, type[MultiNetworkTrainer]] = {"cps": CPSTrainer, "supervised": SupervisedTrainer}
