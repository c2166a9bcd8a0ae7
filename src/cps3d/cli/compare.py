"""cps3d compare: does CPS help on my data? The supervised baseline and CPS, seeded, on the same labeled cases."""

from __future__ import annotations

import argparse
from typing import Any

from cps3d.cli import common
from cps3d.compare.config import EVALUATE, METHODS, OPTIMIZERS, CompareConfig
from cps3d.training.config import TrainConfig

COMMAND = "compare"


def add_parser(sub) -> argparse.ArgumentParser:
    d = CompareConfig()
    p = sub.add_parser(
        COMMAND,
        help="does CPS help on your data? seeded CPS-versus-baseline comparison with confidence intervals",
        description="Train the supervised baseline and CPS on the same labeled cases, plans and number of "
        "iterations, for several seeds and optionally several labeled counts (nested random subsets of the "
        "training cases), score cases that never train (imagesTs/labelsTs when the dataset has them, otherwise a "
        "declared held-out part of labelsTr, written to OUTPUT/split.json) with the FLARE 2022 rules where the "
        "labels are FLARE's and DSC/NSD per label otherwise, and report per organ each run's figures, the mean and "
        "spread over seeds and the paired per-case difference CPS - baseline with a bootstrap confidence interval "
        "(OUTPUT/compare.{json,csv,md,png}). Needs a planned and preprocessed dataset with unlabeled scans "
        "('cps3d plan', 'cps3d preprocess'). Every finished training and prediction is kept: rerunning the same "
        "command resumes.",
    )
    common.add_dataset(p)
    common.add_roots(p, raw=True, preprocessed=True)
    p.add_argument("-c", "--configuration", help=f"planned configuration (default: {d.configuration})")
    p.add_argument("-o", "--output", default="cps3d_compare", metavar="DIR",
                   help="where the split, runs and reports go (default: ./cps3d_compare)")
    p.add_argument("--labeled", type=int, nargs="+", metavar="N",
                   help="labeled training counts, e.g. 2 5 10 (default: every training case)")
    p.add_argument("--seeds", type=int, metavar="N", help=f"number of seeds, 0 to N-1 (default: {len(d.seeds)})")
    p.add_argument("--methods", nargs="+", choices=list(METHODS),
                   help=f"methods, one of them the baseline (default: {' '.join(d.methods)}; cps-paper: the paper's "
                   "Dice+CE cross terms, as 'cps3d train'; cps: cross-entropy on confident pseudo-labels)")
    nnunet, short = OPTIMIZERS["nnunet"], OPTIMIZERS["short"]
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default="nnunet",
                   help=f"SGD settings of every method: nnunet (lr {nnunet['initial_lr']:g}, momentum "
                   f"{nnunet['momentum']:g}, as 'cps3d train'; default) or short (lr {short['initial_lr']:g}, momentum "
                   f"{short['momentum']:g}: learns much faster in runs of a few hundred iterations)")
    p.add_argument("--epochs", type=int,
                   help=f"epochs of every run (default: 'cps3d train's, {common.default_of(TrainConfig, 'epochs')})")
    p.add_argument("--iters-per-epoch", type=int, help="training iterations per epoch (default: "
                   f"{common.default_of(TrainConfig, 'iters_per_epoch')})")
    p.add_argument("--val-iters", type=int, help="validation iterations per epoch (default: "
                   f"{common.default_of(TrainConfig, 'val_iters')})")
    p.add_argument("--max-minutes", type=float, metavar="M",
                   help="stop each CPS run after the epoch in which M minutes passed; its baseline then trains as "
                   "many epochs (equal iterations)")
    p.add_argument("--holdout", type=int, metavar="N",
                   help="without labelsTs/: labeled cases held out as the test set (default: a fifth, at least 1)")
    p.add_argument("--validation", type=int, default=0, metavar="N",
                   help="labeled cases held out for choosing settings (never train, never tested; score them with "
                   "--evaluate val) (default: 0)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the held-out cases (default: 0)")
    p.add_argument("--split", metavar="FILE", help="use this split.json (from an earlier comparison) instead")
    p.add_argument("--evaluate", choices=EVALUATE, help="score the test cases (default), the validation cases, or "
                   "the labeled cases of the --extra dataset")
    p.add_argument("--extra", metavar="FOLDER", help="with --evaluate extra: a raw dataset folder with the same "
                   "labels whose labeled cases (imagesTr/labelsTr) are scored as validation cases drawn apart from the "
                   "dataset (in no fingerprint, no split, never trained)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--jobs", type=int, help=f"runs trained at once (default: {d.jobs})")
    p.add_argument("--threads", type=int, help="torch threads per run (default: 1 when --jobs > 1)")
    common.add_plans_name(p)
    p.add_argument("--bootstrap", type=int, metavar="N", help=f"bootstrap resamples (default: {d.bootstrap})")
    p.add_argument("--discard-models", action="store_true",
                   help="delete each run's checkpoints and predictions once it is scored")
    common.add_skip_check(p)
    common.add_num_processes(p, default=2, what="processes for the dataset check")
    common.add_no_progress(p)
    return p


def run(args: argparse.Namespace) -> int:
    from cps3d.compare import Split, run_compare

    if args.seeds is not None and args.seeds < 1:
        raise common.CLIError(f"--seeds {args.seeds}: must be at least 1")
    ds, _, pre = common.checked_dataset(args)
    options: dict[str, Any] = {k: getattr(args, k) for k in ("configuration", "jobs", "threads", "plans_name",
                                                             "bootstrap") if getattr(args, k) is not None}
    if args.seeds is not None:
        options["seeds"] = tuple(range(args.seeds))
    if args.methods:
        options["methods"] = {m: METHODS[m] for m in args.methods}
    if args.evaluate:
        options["evaluate"] = (args.evaluate,)
    if args.extra:
        options["extra"] = args.extra
    train = dict(OPTIMIZERS[args.optimizer])
    train.update({k: getattr(args, k) for k in ("epochs", "iters_per_epoch", "val_iters")
                  if getattr(args, k) is not None})
    try:
        config = CompareConfig(labeled=tuple(args.labeled) if args.labeled else None, train=train,
                               max_minutes=args.max_minutes, device=args.device, keep=not args.discard_models,
                               progress=not args.no_progress, **options)
        split = Split.load(args.split) if args.split else None
        result = run_compare(ds, pre, args.output, config, split=split, holdout=args.holdout,
                             validation=args.validation, split_seed=args.split_seed)
    except (FileNotFoundError, ValueError) as e:
        raise common.CLIError(str(e)) from e
    print(result.markdown)
    print(f"\nReports: {', '.join(str(p) for p in result.files.values())}")
    return 0
