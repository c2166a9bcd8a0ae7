"""cps3d check: verify a raw dataset before anything reads it for training."""

from __future__ import annotations

import argparse
import os
import sys

from cps3d.cli import common

COMMAND = "check"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        COMMAND,
        help="verify a raw dataset (pairs, geometry, labels, channels, NaN/inf)",
        description="Verify a raw dataset: every training image has its label and vice versa; image and label "
        "geometry agree (shape, spacing, origin, direction); label values are those declared in dataset.json; "
        "files are readable; channel counts match channel_names; unlabeled and test images are readable and "
        "free of NaN/inf. Every problem is reported with its file; the exit status is 1 if any was found.",
    )
    common.add_dataset(p)
    common.add_roots(p, raw=True, preprocessed=True, results=False)
    common.add_num_processes(p, default=2, what="processes reading scans")
    p.add_argument("--no-unlabeled", action="store_true", help="skip imagesUnlabeled/")
    p.add_argument("--no-test", action="store_true", help="skip imagesTs/ and labelsTs/")
    common.add_no_progress(p)
    return p


def _report(name: str, problems: list) -> int:
    print(f"{name}: {len(problems)} problem(s):", file=sys.stderr)
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    from cps3d.dataset import DatasetError, RawDataset, check_dataset, find_dataset_name, record_passed_check

    raw = common.raw_root(args)
    # where a passed check is recorded for plan and preprocess; without a preprocessed root it is not recorded
    pre = common.optional_root(args.preprocessed_root, "--preprocessed-root", "nnUNet_preprocessed")
    try:
        name = find_dataset_name(args.dataset, [raw])
        ds = RawDataset.load(os.path.join(raw, name))
    except DatasetError as e:  # a dataset.json that fails the check: status 1 like any other problem
        return _report(name, e.problems)
    problems = check_dataset(ds, args.num_processes, not args.no_progress,
                             unlabeled=not args.no_unlabeled, test=not args.no_test)
    n_lab, n_unl, n_ts = len(ds.labeled_cases()), len(ds.unlabeled_cases()), len(ds.test_cases())
    if problems:
        return _report(ds.name, problems)
    print(f"{ds.name}: OK ({n_lab} labeled, {n_unl} unlabeled, {n_ts} test case(s) checked)")
    if pre and not args.no_unlabeled:
        record_passed_check(ds, os.path.join(pre, ds.name))
    return 0
