"""cps3d preprocess: nnU-Net preprocessing of labeled cases, and of unlabeled cases stored apart."""

from __future__ import annotations

import argparse

from cps3d.cli import common

COMMAND = "preprocess"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        COMMAND,
        help="preprocess labeled and unlabeled cases for a planned configuration",
        description="Preprocess the labeled cases with nnU-Net's preprocessor and the unlabeled cases the same way "
        "without a segmentation, into <data_identifier>/ and <data_identifier>_unlabeled/ of the preprocessed "
        "dataset folder (unlabeled cases never enter a cross-validation split). Re-running skips finished cases; a "
        "killed run leaves no half-written case behind.",
    )
    common.add_dataset(p)
    common.add_roots(p, raw=True, preprocessed=True)
    p.add_argument("-c", "--configurations", nargs="+", default=["3d_fullres"], metavar="CONFIG",
                   help="configuration(s) of the plans to preprocess (default: 3d_fullres)")
    common.add_plans_name(p)
    p.add_argument("--no-unlabeled", action="store_true", help="preprocess the labeled cases only")
    common.add_num_processes(p, default=2, what="preprocessing processes")
    common.add_skip_check(p)
    common.add_no_progress(p)
    return p


def run(args: argparse.Namespace) -> int:
    from cps3d.planning import load_plans
    from cps3d.preprocessing import preprocess

    ds, _, pre = common.checked_dataset(args)
    try:
        plans = load_plans(pre, ds.name, args.plans_name)
        for c in dict.fromkeys(args.configurations):
            s = preprocess(ds, pre, plans, c, args.num_processes, not args.no_progress, unlabeled=not args.no_unlabeled,
                           verify=args.skip_check)  # without --skip-check, check_dataset has just read every file
            print(f"{c}: {s.done} case(s) preprocessed, {s.skipped} already done -> {s.labeled_folder}"
                  + ("" if args.no_unlabeled else f" and {s.unlabeled_folder}"))
    except RuntimeError as e:  # cases that failed (named; the others are stored): status 1
        raise common.CLIError(str(e), status=1) from e
    return 0
