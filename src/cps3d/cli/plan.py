"""cps3d plan: dataset fingerprint (global intensity statistics by default) and nnU-Net plans for 2d and 3d_fullres."""

from __future__ import annotations

import argparse

from cps3d.cli import common
from cps3d.fingerprint import INTENSITY_MODES, FingerprintConfig
from cps3d.planning import CONFIGURATIONS, PLANNERS, PlanConfig

COMMAND = "plan"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        COMMAND,
        help="fingerprint the dataset and plan 2d / 3d_fullres residual-encoder U-Nets",
        description="Compute the dataset fingerprint (intensity statistics from labeled and unlabeled scans by "
        "default) and write nnU-Net plans with a residual-encoder planner. CPS trains two networks on a labeled and "
        "an unlabeled batch each, so the planner's GPU memory target is divided by 2 x (1 + unlabeled/labeled batch "
        "ratio), 4 by default; the figures are recorded in the plans under 'cps3d'. Overrides apply to every "
        "configuration given with -c (plan 2d and 3d_fullres in separate runs to give each its own patch size).",
    )
    common.add_dataset(p)
    common.add_roots(p, raw=True, preprocessed=True)
    g = p.add_argument_group("fingerprint")
    fp = FingerprintConfig()  # the defaults
    g.add_argument("--intensity-stats", choices=INTENSITY_MODES, default=None,
                   help="voxels the CT intensity statistics come from: all voxels of labeled and unlabeled scans "
                   "(global, the paper's), labeled foreground only (foreground, nnU-Net's), or labeled and unlabeled "
                   f"voxels above --body-threshold (body) (default: {fp.intensity_stats})")
    g.add_argument("--body-threshold", type=float, default=None, metavar="HU",
                   help=f"threshold of --intensity-stats body (default: {fp.body_threshold_hu:g})")
    g.add_argument("--fingerprint-samples", type=int, default=None, metavar="N",
                   help=f"voxels sampled in total for global/body statistics (default: {fp.samples_total})")
    g.add_argument("--seed", type=int, default=None, help=f"seed of the intensity sampler (default: {fp.seed})")
    g.add_argument("--overwrite-fingerprint", action="store_true",
                   help="recompute the fingerprint even if an up-to-date one exists")
    g = p.add_argument_group("planning")
    plan = PlanConfig()  # the defaults
    g.add_argument("--planner", default=None, choices=PLANNERS, help=f"nnU-Net planner (default: {plan.planner})")
    common.add_plans_name(g)
    g.add_argument("-c", "--configurations", nargs="+", default=None, choices=CONFIGURATIONS,
                   metavar="CONFIG", help=f"configurations to plan: {' and/or '.join(CONFIGURATIONS)} "
                   f"(default: {' '.join(plan.configurations)})")
    g.add_argument("--gpu-memory-gb", type=float, metavar="GB",
                   help="GPU memory CPS training may use (default: the planner's target, 8 for ResEnc M)")
    g.add_argument("--memory-factor", type=float, metavar="F",
                   help="divide the memory target by F instead of 2 x (1 + unlabeled/labeled); 1 plans as nnU-Net")
    g.add_argument("--patch-size", type=int, nargs="+", metavar="N",
                   help="patch size in voxels (3 numbers for 3d_fullres, 2 for 2d, in the plans' axis order)")
    g.add_argument("--n-stages", type=int, metavar="N", help="number of resolution stages of the U-Net")
    g.add_argument("--base-features", type=int, metavar="N", help="features of the first stage (default: 32)")
    g.add_argument("--max-features", type=int, metavar="N", help="feature cap (default: 320 in 3D, 512 in 2D)")
    g.add_argument("--batch-size", type=int, metavar="N", help="labeled batch size per network and iteration")
    g.add_argument("--unlabeled-batch-size", type=int, metavar="N",
                   help="unlabeled batch size per network and iteration (default: the labeled batch size)")
    common.add_num_processes(p, default=2, what="processes reading scans")
    common.add_skip_check(p)
    common.add_no_progress(p)
    return p


def run(args: argparse.Namespace) -> int:
    from cps3d.dataset import DatasetError
    from cps3d.fingerprint import ensure_fingerprint
    from cps3d.planning import plan_experiment

    fp_given = {"intensity_stats": args.intensity_stats, "body_threshold_hu": args.body_threshold,
                "samples_total": args.fingerprint_samples, "seed": args.seed}
    fp_config = FingerprintConfig(**{k: v for k, v in fp_given.items() if v is not None})
    plan_given = {"planner": args.planner,
                  "configurations": tuple(dict.fromkeys(args.configurations)) if args.configurations else None}
    plan_config = PlanConfig(**{k: v for k, v in plan_given.items() if v is not None}, plans_name=args.plans_name,
                             gpu_memory_gb=args.gpu_memory_gb, memory_factor=args.memory_factor,
                             patch_size=tuple(args.patch_size) if args.patch_size else None,
                             n_stages=args.n_stages, base_features=args.base_features,
                             max_features=args.max_features, batch_size=args.batch_size,
                             unlabeled_batch_size=args.unlabeled_batch_size)
    ds, raw, pre = common.checked_dataset(args)
    try:
        fp = ensure_fingerprint(ds, pre, fp_config, args.num_processes, not args.no_progress,
                                overwrite=args.overwrite_fingerprint, verify=args.skip_check)
        plan_experiment(raw, pre, ds.name, plan_config, fingerprint_meta=fp.get("cps3d"))
    except DatasetError as e:  # files refused as they were read (--skip-check): the input failed, status 1
        raise common.CLIError(str(e), status=1) from e
    return 0
