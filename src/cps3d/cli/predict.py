"""cps3d predict: segment scans with a trained model (network 1, network 2 or both), optionally with forced spacing."""

from __future__ import annotations

import argparse
import os
import sys

from cps3d.cli import common

COMMAND = "predict"


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated label numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one label number")
    return values


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        COMMAND,
        help="segment scans with a trained model (branch 1, 2 or ensemble; forced spacing; low-memory export)",
        description="Segment scans with a trained cps3d (or nnU-Net) model folder. INPUT: folders of scans "
        "(nnU-Net naming CASE_0000.nii.gz, channels side by side; plain names such as scan.nii.gz for single-channel "
        "models), single files, or folders holding a DICOM series (written as NIfTI with the series' geometry). "
        "Label maps come back on exactly each scan's grid (shape, spacing, origin, direction). Defaults follow the "
        "paper: sliding-window step 0.7, no test-time mirroring. A case that fails is reported and the others go "
        "on; the exit status is 1 if any failed.",
    )
    p.add_argument("-i", "--input", nargs="+", required=True, metavar="INPUT",
                   help="folder(s) of scans, scan file(s) or DICOM series folder(s)")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT_DIR", help="folder for the label maps")
    p.add_argument("-m", "--model", required=True, metavar="MODEL_DIR",
                   help="trained model folder <results>/<dataset>/<Trainer>__<plans>__<configuration>")
    p.add_argument("-f", "--folds", nargs="+", metavar="FOLD",
                   help="folds to use (numbers or 'all'; default: every fold_N holding the checkpoint)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth", metavar="NAME",
                   help="checkpoint file in each fold folder (default: checkpoint_final.pth)")
    p.add_argument("--branch", choices=("1", "2", "ensemble"), default="1",
                   help="network 1, network 2, or the average of both (CPS models; default 1)")
    p.add_argument("--ensemble-average", choices=("probabilities", "logits"), default="probabilities",
                   help="what several parameter sets (folds x branches) average: probabilities (default, as in CPS "
                   "validation) or logits (as nnU-Net does)")
    p.add_argument("--protocol", choices=("paper", "nnunet"),
                   help="a whole protocol: paper = step 0.7, no TTA, forced spacing paper; nnunet = step 0.5, TTA, "
                   "no forced spacing. Explicit --step-size, --tta/--no-tta and --forced-spacing win over it")
    p.add_argument("--step-size", type=float, metavar="S", help="sliding-window step, fraction of the patch "
                   "(default 0.7)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time mirroring (default off)")
    p.add_argument("--forced-spacing", metavar="off|paper|authors|SX,SY,SZ",
                   help="assume a fixed spacing (mm) before nnU-Net's resampling: paper = 0.75,0.75,0.5, authors = "
                   "1,1,1.5; thin scans (<150 slices) keep their slice spacing, long ones (>600) get a finer one "
                   "(default off)")
    p.add_argument("--postprocess", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the largest connected component of each label, or apply the model folder's nnU-Net "
                   "postprocessing.pkl when it has one (default on)")
    p.add_argument("--postprocess-labels", type=_csv_ints, metavar="L1,L2,...",
                   help="keep the largest component of these labels only (default: every label)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write probabilities like nnU-Net (CASE.npz + CASE.pkl); needs memory for all classes")
    p.add_argument("--resampling", choices=("torch", "exact"),
                   help="torch: the fast path, nnU-Net's torch resampling (linear, float32) on the network's device "
                   "for the scan and for the export, label maps close to stock nnU-Net's; exact: the plans' resampling, "
                   "label maps identical to stock nnU-Net's (default exact)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--part-id", type=int, default=0, metavar="K", help="predict only share K of --num-parts")
    p.add_argument("--num-parts", type=int, default=1, metavar="N",
                   help="split the sorted case list into N shares (every N-th case), e.g. one per machine")
    common.add_num_processes(p, default=2, what="worker processes for reading and for export each")
    p.add_argument("--overwrite", action="store_true", help="predict cases whose output already exists")
    p.add_argument("--profile", metavar="OUT_DIR",
                   help="measure time, CPU, RAM and GPU memory (FLARE 2022 measures, per case, GPU memory above "
                   "FLARE's 2048 MB allowance) into OUT_DIR")
    common.add_no_progress(p)
    return p


def run(args: argparse.Namespace) -> int:
    import logging

    from tqdm.contrib.logging import logging_redirect_tqdm

    from cps3d.inference.forced_spacing import parse_forced_spacing
    from cps3d.inference.predictor import PROTOCOLS, PredictConfig, predict

    log = logging.getLogger("cps3d.predict")
    settings = dict(PROTOCOLS[args.protocol]) if args.protocol else {}
    if args.forced_spacing is not None:
        settings["forced_spacing"] = parse_forced_spacing(args.forced_spacing)
    if args.step_size is not None:
        settings["step_size"] = args.step_size
    if args.tta is not None:
        settings["use_mirroring"] = args.tta
    if args.resampling is not None:
        settings["resampling"] = args.resampling
    config = PredictConfig(
        folds=tuple(args.folds) if args.folds else None, checkpoint=args.checkpoint, branch=args.branch,
        ensemble_average=args.ensemble_average, device=args.device, postprocess=args.postprocess,
        postprocess_labels=args.postprocess_labels, save_probabilities=args.save_probabilities,
        overwrite=args.overwrite, part_id=args.part_id, num_parts=args.num_parts,
        num_processes=args.num_processes, progress=not args.no_progress, **settings)
    if args.protocol:
        log.info("Protocol %s: step %.2f, mirroring %s, forced spacing %s", args.protocol, config.step_size,
                 "on" if config.use_mirroring else "off",
                 "off" if config.forced_spacing is None else config.forced_spacing.to_dict())

    profiler = None
    if args.profile:
        from cps3d.evaluation.profiler import ResourceProfiler
        from cps3d.files import check_output_folder

        check_output_folder(args.profile, "profile folder (--profile)")

        profiler = ResourceProfiler(interval=0.1)
        profiler.start()
    try:
        with logging_redirect_tqdm():
            report = predict(args.input, args.output, args.model, config, profiler=profiler)
    finally:
        if profiler is not None:
            profiler.stop()
    if profiler is not None:
        from cps3d.evaluation.profiler import FLARE_GPU_ALLOWANCE_MB

        summary = profiler.write(args.profile, gpu_allowance_mb=FLARE_GPU_ALLOWANCE_MB,
                                 extra={"command": "cps3d predict", "config": config.to_dict()})
        print(summary.format(), file=sys.stderr)
        print(f"profile written to {args.profile}", file=sys.stderr)

    where = f"output in {args.output}" if os.path.isdir(args.output) else "nothing written"
    print(f"{len(report.predicted)} case(s) predicted, {len(report.skipped)} skipped (output exists), "
          f"{len(report.failed)} failed; {where}")
    if report.failed:
        print(f"{len(report.failed)} case(s) failed:", file=sys.stderr)
        for failure in report.failed:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0
