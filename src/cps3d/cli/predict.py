"""cps3d predict: segment scans with a trained model (network 1, network 2 or both), optionally with forced spacing."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from cps3d.cli import common

if TYPE_CHECKING:
    from cps3d.inference.config import PredictConfig

COMMAND = "predict"


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated label numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one label number")
    return values


def _default(name: str):
    from cps3d.inference.config import PredictConfig

    return common.default_of(PredictConfig, name)


def _on_off(value: bool) -> str:
    return "on" if value else "off"


def add_parser(sub) -> argparse.ArgumentParser:
    from cps3d.images import format_values
    from cps3d.inference.config import AVERAGES, PROTOCOLS
    from cps3d.inference.forced_spacing import PRESETS
    from cps3d.inference.model import BRANCHES

    paper, nnunet = PROTOCOLS["paper"], PROTOCOLS["nnunet"]
    rule = PRESETS["paper"]
    p = sub.add_parser(
        COMMAND,
        help="segment scans with a trained model (branch 1, 2 or ensemble; forced spacing; low-memory export)",
        description="Segment scans with a trained cps3d (or nnU-Net) model folder. INPUT: folders of scans "
        "(nnU-Net naming CASE_0000.nii.gz, channels side by side; plain names such as scan.nii.gz for single-channel "
        "models), single files, or folders holding a DICOM series (written as NIfTI with the series' geometry). "
        "Label maps come back on exactly each scan's grid (shape, spacing, origin, direction). Defaults follow the "
        f"paper: sliding-window step {_default('step_size'):g}, test-time mirroring "
        f"{_on_off(_default('use_mirroring'))}. A case that fails is reported and the others go on; the exit status "
        "is 1 if any failed.",
    )
    p.add_argument("-i", "--input", nargs="+", required=True, metavar="INPUT",
                   help="folder(s) of scans, scan file(s) or DICOM series folder(s)")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT_DIR", help="folder for the label maps")
    p.add_argument("-m", "--model", required=True, metavar="MODEL_DIR",
                   help="trained model folder <results>/<dataset>/<Trainer>__<plans>__<configuration>")
    p.add_argument("-f", "--folds", nargs="+", metavar="FOLD",
                   help="folds to use (numbers or 'all'; default: every fold_N holding the checkpoint)")
    p.add_argument("--checkpoint", metavar="NAME",
                   help=f"checkpoint file in each fold folder (default: {_default('checkpoint')})")
    p.add_argument("--branch", choices=BRANCHES,
                   help=f"network 1, network 2, or the average of both (CPS models; default {_default('branch')})")
    p.add_argument("--ensemble-average", choices=AVERAGES,
                   help="what several parameter sets (folds x branches) average: probabilities (as in CPS "
                   f"validation) or logits (as nnU-Net does) (default: {_default('ensemble_average')})")
    p.add_argument("--protocol", choices=tuple(PROTOCOLS),
                   help=f"a whole protocol: paper = step {paper['step_size']:g}, TTA "
                   f"{_on_off(paper['use_mirroring'])}, forced spacing paper; nnunet = step {nnunet['step_size']:g}, "
                   f"TTA {_on_off(nnunet['use_mirroring'])}, no forced spacing, resampling {nnunet['resampling']} "
                   "(stock nnU-Net's label maps). Explicit options win over it")
    p.add_argument("--step-size", type=float, metavar="S", help="sliding-window step, fraction of the patch "
                   f"(default {_default('step_size'):g})")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction,
                   help=f"test-time mirroring (default {_on_off(_default('use_mirroring'))})")
    p.add_argument("--forced-spacing", metavar="off|" + "|".join(PRESETS) + "|SX,SY,SZ",
                   help="assume a fixed spacing (mm) before nnU-Net's resampling: "
                   + ", ".join(f"{name} = {format_values((f.sx, f.sy, f.sz), sep=',')}" for name, f in PRESETS.items())
                   + f"; thin scans (<{rule.min_slices} slices) keep their slice spacing, long ones "
                   f"(>{rule.max_slices}) get a finer one (default "
                   f"{'off' if _default('forced_spacing') is None else 'on'})")
    p.add_argument("--postprocess", action=argparse.BooleanOptionalAction,
                   help="keep the largest connected component of each label, or apply the model folder's nnU-Net "
                   f"postprocessing.pkl when it has one (default {_on_off(_default('postprocess'))})")
    p.add_argument("--postprocess-labels", type=_csv_ints, metavar="L1,L2,...",
                   help="keep the largest component of these labels only (default: every label)")
    p.add_argument("--save-probabilities", action="store_true", default=None,
                   help="also write probabilities like nnU-Net (CASE.npz + CASE.pkl); needs memory for all classes")
    # no argparse choices: the option set is cps3d.inference.fast.RESAMPLINGS, which PredictConfig checks (importing
    # it here would import torch for every command line)
    p.add_argument("--resampling", metavar="exact|torch-export|torch",
                   help="torch-export: the scan resampled as nnU-Net does (cubic spline), the export on nnU-Net's "
                   "torch resampling (one class at a time, on the network's device: the logits stay on the GPU with "
                   "CUDA); exact: the plans' resampling of the scan and of the export, label maps identical to stock "
                   "nnU-Net's; torch: nnU-Net's torch resampling (linear, float32) for the scan too, the fastest. "
                   "torch-export is the default because its label maps meet the bar for one (>= 99.9%% of voxels and "
                   "every organ's DSC >= 0.995 against stock nnU-Net on every test scan) and it is faster than exact; "
                   "torch's miss it (the scan's linear resampling). Figures: benchmarks/README.md "
                   f"(default {_default('resampling')})")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--part-id", type=int, metavar="K",
                   help=f"predict only share K of --num-parts (default {_default('part_id')})")
    p.add_argument("--num-parts", type=int, metavar="N",
                   help="split the sorted case list into N shares (every N-th case), e.g. one per machine "
                   f"(default {_default('num_parts')})")
    common.add_num_processes(p, default=2, what="worker processes for reading and for export each")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="predict cases whose output already exists")
    p.add_argument("--profile", metavar="OUT_DIR",
                   help="measure time, CPU, RAM and GPU memory (FLARE 2022 measures, per case, GPU memory above "
                   "FLARE's 2048 MB allowance) into OUT_DIR")
    common.add_no_progress(p)
    return p


def config_from_args(args: argparse.Namespace) -> PredictConfig:
    """The :class:`PredictConfig` of a ``cps3d predict`` command line: the protocol's settings, then the options
    given; options not given are None and PredictConfig (or the protocol) supplies them."""
    from cps3d.inference.config import PROTOCOLS, PredictConfig
    from cps3d.inference.forced_spacing import parse_forced_spacing

    settings = dict(PROTOCOLS[args.protocol]) if args.protocol else {}
    if args.forced_spacing is not None:
        settings["forced_spacing"] = parse_forced_spacing(args.forced_spacing)
    given = {"checkpoint": args.checkpoint, "branch": args.branch, "ensemble_average": args.ensemble_average,
             "step_size": args.step_size, "use_mirroring": args.tta, "resampling": args.resampling,
             "device": args.device, "postprocess": args.postprocess, "postprocess_labels": args.postprocess_labels,
             "save_probabilities": args.save_probabilities, "overwrite": args.overwrite, "part_id": args.part_id,
             "num_parts": args.num_parts}
    settings.update({k: v for k, v in given.items() if v is not None})
    return PredictConfig(folds=tuple(args.folds) if args.folds else None, num_processes=args.num_processes,
                         progress=not args.no_progress, **settings)


def run(args: argparse.Namespace) -> int:
    import logging

    from tqdm.contrib.logging import logging_redirect_tqdm

    from cps3d.inference.predictor import predict

    log = logging.getLogger("cps3d.predict")
    config = config_from_args(args)
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
