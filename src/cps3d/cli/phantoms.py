"""cps3d phantoms: write a synthetic abdominal CT dataset (nnU-Net raw layout, FLARE 2022 labels)."""

from __future__ import annotations

import argparse

from cps3d.cli import common

# the writer's own defaults (cps3d --help imports cps3d.phantoms anyway: the demo command's defaults need it)
from cps3d.phantoms.params import SIZES
from cps3d.phantoms.writer import DEFAULT_DATASET_ID, DEFAULT_NAME

COMMAND = "phantoms"


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        COMMAND,
        help="write a synthetic abdominal CT dataset (labeled, unlabeled and test phantoms)",
        description="Write OUT_DIR/DatasetNNN_NAME, a complete nnU-Net raw dataset of synthetic abdominal CT "
        "phantoms in Hounsfield units with the 13 FLARE 2022 organ labels: imagesTr/labelsTr (labeled), "
        "imagesUnlabeled, imagesTs/labelsTs (test), dataset.json, and phantom_params/CASE.json (the parameters "
        "each case was rendered from). The same seed always gives the same files; labeled, unlabeled and test "
        "cases come from separate random streams, so adding cases of one kind never changes the others.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to create the dataset folder in (e.g. $nnUNet_raw)")
    p.add_argument("--labeled", type=_non_negative, required=True, metavar="N", help="number of labeled cases (>= 1)")
    p.add_argument("--unlabeled", type=_non_negative, required=True, metavar="M", help="number of unlabeled cases")
    p.add_argument("--test", type=_non_negative, required=True, metavar="K",
                   help="number of test cases (with labels in labelsTs/)")
    p.add_argument("--seed", type=_non_negative, default=0, metavar="S", help="dataset seed (default: 0)")
    p.add_argument("--size", choices=SIZES, default="small",
                   help="small: ~30-64 voxels per side, for tests (well under 1 s per case); medium: 96-160 "
                   "in-plane, 48-96 slices, for the demo; full: 512x512, 1-5 mm slices, up to hundreds of slices, "
                   "like FLARE (several seconds per case). Default: small")
    p.add_argument("--dataset-id", type=int, default=DEFAULT_DATASET_ID, metavar="ID",
                   help=f"dataset id, 1-999 (default: {DEFAULT_DATASET_ID})")
    p.add_argument("--name", default=DEFAULT_NAME, help=f"dataset name (default: {DEFAULT_NAME})")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an existing non-empty dataset folder, replacing phantom files of the same names "
                   "(nothing is deleted; refused if other case files are in the way)")
    common.add_num_processes(p, default=1, what="processes rendering cases")
    common.add_no_progress(p)
    return p


def run(args: argparse.Namespace) -> int:
    from cps3d.phantoms.writer import write_dataset

    if args.labeled < 1:
        raise common.CLIError("--labeled must be at least 1 (nnU-Net needs labeled training cases)")
    if args.num_processes < 1:
        raise common.CLIError(f"-np must be at least 1, got {args.num_processes}")
    folder = write_dataset(args.out_dir, args.labeled, args.unlabeled, args.test, seed=args.seed, size=args.size,
                           dataset_id=args.dataset_id, name=args.name, num_processes=args.num_processes,
                           progress=not args.no_progress, overwrite=args.overwrite)
    print(f"{folder}: {args.labeled} labeled, {args.unlabeled} unlabeled, {args.test} test {args.size} phantom(s) "
          f"(seed {args.seed})")
    return 0
