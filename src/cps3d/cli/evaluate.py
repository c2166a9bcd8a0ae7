"""cps3d evaluate: DSC and NSD of a prediction folder against references, with the FLARE 2022 rules."""

from __future__ import annotations

import argparse
import os
import sys

from cps3d.cli import common

COMMAND = "evaluate"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        COMMAND,
        help="DSC and NSD of predictions against references (FLARE 2022 rules)",
        description="Score every reference in REF_DIR against the same-named prediction in PRED_DIR: Dice (DSC) "
        "and normalized surface Dice (NSD) per case and organ, with the FLARE 2022 rules (both empty: 1; one "
        "empty: 0; aorta, IVC and esophagus only on the reference's axial extent; NSD tolerances per organ; "
        "NSD = 0 when DSC < 0.2). Prints a table of mean ± std per organ and writes metrics_per_case.csv and "
        "summary.json. With --compare and no --pred/--ref, only compares two summary.json files.",
    )
    p.add_argument("--pred", metavar="PRED_DIR", help="folder of predicted label maps")
    p.add_argument("--ref", metavar="REF_DIR", help="folder of reference label maps (same file names)")
    p.add_argument("--dataset-json", metavar="FILE",
                   help="dataset.json giving labels, names and file ending (default: labels found in the files, "
                   "1-13 taken as FLARE's organs, ending .nii.gz)")
    p.add_argument("-o", "--output", metavar="OUT_DIR",
                   help="where to write metrics_per_case.csv and summary.json (default: PRED_DIR)")
    common.add_num_processes(p, default=2, what="processes scoring cases")
    p.add_argument("--default-tolerance", type=float, default=2.0, metavar="MM",
                   help="NSD tolerance of labels that are not FLARE organs (default: 2 mm)")
    p.add_argument("--tolerances", metavar="FILE",
                   help='JSON file {"label name or number": mm} overriding NSD tolerances')
    p.add_argument("--slice-range", choices=("official", "inclusive"), default="official",
                   help="axial extent for aorta, IVC, esophagus: 'official' stops before the reference's top slice "
                   "as FLARE 2022's script does (default); 'inclusive' keeps it")
    p.add_argument("--nsd-min-dice", type=float, default=0.2, metavar="D",
                   help="NSD is 0 when DSC is below this (default: 0.2, FLARE 2022)")
    p.add_argument("--compare", nargs="+", metavar="SUMMARY_JSON",
                   help="after evaluating, print this run beside another summary.json; without --pred/--ref, "
                   "give two summary.json files to compare")
    common.add_no_progress(p)
    return p


def _compare_only(paths: list[str]) -> int:
    from cps3d.evaluation import compare_summaries, load_summary

    if len(paths) != 2:
        raise common.CLIError(f"without --pred/--ref, --compare takes two summary.json files, got {len(paths)}")
    a, b = load_summary(paths[0]), load_summary(paths[1])
    print(compare_summaries(a, b, paths[0], paths[1]))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.pred is None and args.ref is None:
        if args.compare:
            return _compare_only(args.compare)
        raise common.CLIError("give --pred PRED_DIR and --ref REF_DIR (or --compare A.json B.json)")
    if args.pred is None or args.ref is None:
        raise common.CLIError("give both --pred PRED_DIR and --ref REF_DIR")
    if args.compare and len(args.compare) != 1:
        raise common.CLIError(f"with --pred/--ref, --compare takes one summary.json, got {len(args.compare)}")
    if args.num_processes < 1:
        raise common.CLIError(f"--num-processes must be at least 1, got {args.num_processes}")

    from cps3d.evaluation import (
        CasesNotScored,
        compare_summaries,
        evaluate_folders,
        format_table,
        load_summary,
        load_tolerances,
        write_per_case_csv,
        write_summary_json,
    )
    from cps3d.files import check_output_folder

    out_dir = args.output or args.pred
    try:
        check_output_folder(out_dir, "output folder (-o)" if args.output else "prediction folder")
        other = load_summary(args.compare[0]) if args.compare else None  # fail before the long part
        tolerances = load_tolerances(args.tolerances) if args.tolerances else None
        result = evaluate_folders(args.pred, args.ref, dataset_json=args.dataset_json, tolerances=tolerances,
                                  num_processes=args.num_processes, default_tolerance_mm=args.default_tolerance,
                                  slice_range=args.slice_range, nsd_min_dice=args.nsd_min_dice,
                                  progress=not args.no_progress)
    except CasesNotScored as e:  # the input is wrong, not the command: exit status 1, like a failed check
        print(f"cps3d evaluate: {e}", file=sys.stderr)
        return 1
    csv_path = os.path.join(out_dir, "metrics_per_case.csv")
    json_path = os.path.join(out_dir, "summary.json")
    write_per_case_csv(csv_path, result)
    write_summary_json(json_path, result)
    print(format_table(result.summary))
    if other is not None:
        print()
        print(compare_summaries(other, result.summary, args.compare[0], "this run"))
    print(f"\nwrote {csv_path} and {json_path}", file=sys.stderr)
    return 0
