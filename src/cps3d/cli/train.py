"""cps3d train: CPS (two networks, labeled + unlabeled) or supervised training of one fold."""

from __future__ import annotations

import argparse
import os
import sys

from cps3d.cli import common
from cps3d.training.config import CROSS_LOSSES, LR_SCHEDULES, MODES, PLATEAU_SIGNALS, TrainConfig

COMMAND = "train"


def _default(name: str):
    return common.default_of(TrainConfig, name)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        COMMAND,
        help="train CPS (or the supervised baseline) on a preprocessed configuration",
        description="Train one fold. --mode cps trains two sibling networks (different initialisation, one SGD "
        "optimizer each) on a labeled and an unlabeled batch per iteration with loss L_sup + lambda * (L_cps_labeled "
        "+ L_cps_unlabeled), lambda rising linearly from 0 to --lambda-max. --mode supervised trains one network "
        "with the same pipeline (the ablation's baseline). The model folder is "
        "<results>/<dataset>/<Trainer>__<plans>__<configuration>/fold_<f>/ as in nnU-Net.",
    )
    common.add_dataset(p)
    common.add_roots(p, raw=False, preprocessed=True, results=True)
    p.add_argument("-c", "--configuration", default="3d_fullres", help="2d or 3d_fullres (default: 3d_fullres)")
    p.add_argument("-f", "--fold", default="0",
                   help="fold 0-4 of nnU-Net's 5-fold split (0 to N-1 when the preprocessed dataset folder has a "
                   "splits_final.json with N folds), or 'all' (default: 0)")
    p.add_argument("--mode", choices=MODES, default=None, help=f"default: {_default('mode')}")
    common.add_plans_name(p)
    p.add_argument("--epochs", type=int, default=None, help=f"default: {_default('epochs')}")
    p.add_argument("--iters-per-epoch", type=int, default=None,
                   help=f"training iterations per epoch (default: {_default('iters_per_epoch')})")
    p.add_argument("--val-iters", type=int, default=None,
                   help=f"validation iterations per epoch (default: {_default('val_iters')})")
    p.add_argument("--lambda-max", type=float, default=None,
                   help=f"final CPS weight (default: {_default('lambda_max')})")
    p.add_argument("--lambda-ramp-epochs", type=int, metavar="N",
                   help="epochs over which lambda rises from 0 to --lambda-max (default: half of --epochs)")
    p.add_argument("--lambda-start-epoch", type=int, default=None, metavar="N",
                   help=f"hold lambda at 0 for the first N epochs, then ramp (default: {_default('lambda_start_epoch')}, "
                   "the paper's; a warm-up for "
                        "short runs, where the cross terms can otherwise teach both networks to predict background)")
    p.add_argument("--cps-loss", choices=CROSS_LOSSES, default=None,
                   help="loss of the cross terms: dice_ce (the paper's: Dice+CE against the other network's argmax) or "
                   f"ce (cross-entropy only, as the original CPS; with --confidence) (default: {_default('cps_loss')})")
    p.add_argument("--confidence", type=float, default=None, metavar="T",
                   help="with --cps-loss ce: leave out of the cross terms the voxels where the other network's top "
                   f"softmax probability is below T, in [0, 1) (default: {_default('confidence'):g}, every voxel)")
    p.add_argument("--cutmix", action=argparse.BooleanOptionalAction, default=None,
                   help="compute the unlabeled cross terms on a CutMix of the unlabeled batch against the other "
                   "network's pseudo-labels of the unmixed images, mixed the same way (the original CPS's "
                   f"augmentation, not the paper's; default: {'on' if _default('cutmix') else 'off'})")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help="ReduceLROnPlateau on the training loss (the paper's) or nnU-Net's poly decay "
                   f"(default: {_default('lr_schedule')})")
    p.add_argument("--plateau-on", choices=PLATEAU_SIGNALS, default=None,
                   help="the loss of each network that the plateau schedule watches: total (supervised + lambda x "
                   f"CPS, which rises by design while lambda ramps up) or supervised (default: {_default('plateau_on')})")
    p.add_argument("--lr-final-decay", type=float, default=None, metavar="SHARE",
                   help="let the learning rate fall linearly to 0 over the last SHARE of the run (0 to 1), on top of "
                   "--lr-schedule; the run's progress is its epoch over --epochs or, with --max-minutes, its time "
                   f"if further on (default: {_default('lr_final_decay'):g}, off: the paper's)")
    p.add_argument("--initial-lr", type=float, default=None, help=f"default: {_default('initial_lr')}")
    p.add_argument("--momentum", type=float, default=None,
                   help=f"SGD (Nesterov) momentum (default: {_default('momentum')}, nnU-Net's; for runs of a few "
                   "hundred iterations 0.9 "
                   "with --initial-lr 0.1 learns much faster, see the README)")
    p.add_argument("--seed", type=int, default=None,
                   help=f"network 1 is initialised with SEED, network 2 with SEED+1 (default: {_default('seed')})")
    p.add_argument("--save-every", type=int, default=None,
                   help=f"write checkpoint_latest.pth every N epochs (default: {_default('save_every')})")
    p.add_argument("--max-minutes", type=float, metavar="M",
                   help="stop after the epoch in which M minutes of training have passed (final checkpoint as if "
                   "--epochs had been reached; --continue goes on from there)")
    p.add_argument("--final-validation", action=argparse.BooleanOptionalAction, default=None,
                   help="predict the validation fold at the end, as nnU-Net does (default: "
                   f"{'on' if _default('final_validation') else 'off'}; --no-final-validation skips it)")
    p.add_argument("--no-amp", dest="amp", action="store_const", const=False, default=None,
                   help="disable mixed precision on CUDA")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--continue", dest="continue_training", action="store_true",
                   help="resume from the fold's latest checkpoint (or extend a finished run to more --epochs); options not "
                   "given are the run's own, and only --epochs, --max-minutes, --save-every, --val-iters and "
                   "--[no-]final-validation may differ from them (see the README)")
    p.add_argument("--overwrite", action="store_true", help="train again from scratch over a finished run")
    p.add_argument("--num-gpus", type=int, default=1, metavar="N",
                   help="train with N processes under PyTorch DDP on this machine (launches torchrun: one process "
                   "per GPU with NCCL, or N CPU processes with gloo when --device cpu); for several machines run "
                   "torchrun yourself (see the README)")
    p.add_argument("--num-workers", type=int, metavar="N",
                   help="data augmentation processes (sets nnUNet_n_proc_DA; 0 = in the main process)")
    common.add_no_progress(p)
    return p


def _launch_torchrun(args: argparse.Namespace, argv: list[str]) -> int:
    """Re-run this command under ``torchrun --standalone --nproc-per-node N`` and return its exit status."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.num_gpus}",
           "-m", "cps3d", *argv]
    print("Launching: " + " ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd)


def _argv_without_num_gpus(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--num-gpus":
            skip = True
            continue
        if a.startswith("--num-gpus="):
            continue
        out.append(a)
    return out


# the TrainConfig fields that options set, by argparse dest (every default is None: "not given")
_CONFIG_OPTIONS = ("mode", "epochs", "iters_per_epoch", "val_iters", "lambda_max", "lambda_ramp_epochs",
                   "lambda_start_epoch", "cps_loss", "confidence", "cutmix", "lr_schedule", "plateau_on",
                   "lr_final_decay", "initial_lr", "momentum", "seed", "save_every", "max_minutes", "final_validation", "amp")


def _train_config(args: argparse.Namespace, preprocessed_root, results_root, dataset_name: str):
    """TrainConfig's defaults with the options given; with --continue, the run folder's saved configuration with the
    options given (``cps3d.training.run.train`` then refuses those that may not change)."""
    from dataclasses import replace

    from cps3d.training.run import check_fold, model_folder, saved_train_config

    given = {k: getattr(args, k) for k in _CONFIG_OPTIONS if getattr(args, k) is not None}
    if args.continue_training:
        fold = check_fold(args.fold, preprocessed_root, dataset_name)
        folder = model_folder(results_root, dataset_name, given.get("mode", _default("mode")), args.plans_name,
                              args.configuration) / f"fold_{fold}"
        saved = saved_train_config(folder)
        if saved is not None:
            return replace(saved, **given)
    return TrainConfig(**given)


def run(args: argparse.Namespace) -> int:
    if args.num_gpus < 1:
        raise common.CLIError(f"--num-gpus {args.num_gpus}: must be at least 1")
    if args.fold != "all" and not args.fold.isdigit():
        raise common.CLIError(f"--fold {args.fold!r}: give a number (0-4) or 'all'")
    from cps3d.dataset import find_dataset_name
    from cps3d.training.run import check_fold

    pre = common.preprocessed_root(args, must_exist=True)
    name = find_dataset_name(args.dataset, [pre])  # before torchrun starts N processes that would all fail
    check_fold(args.fold, pre, name)
    if args.num_gpus > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        if args.device != "cpu":
            import torch

            if torch.cuda.device_count() < args.num_gpus:
                raise common.CLIError(f"--num-gpus {args.num_gpus}: only {torch.cuda.device_count()} CUDA device(s) "
                                      "visible (use --device cpu for CPU processes with gloo)")
        return _launch_torchrun(args, _argv_without_num_gpus(sys.argv[1:] if args._argv is None else args._argv))
    if args.num_workers is not None:
        if args.num_workers < 0:
            raise common.CLIError(f"--num-workers {args.num_workers}: must be >= 0")
        os.environ["nnUNet_n_proc_DA"] = str(args.num_workers)
    from cps3d.training.run import train

    res = common.results_root(args)
    config = _train_config(args, pre, res, name)
    trainer = train(name, pre, res, args.configuration, args.fold, config, args.plans_name, args.device,
                    args.continue_training, args.overwrite, show_progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"Model folder: {os.path.dirname(trainer.output_folder)}")
    return 0
