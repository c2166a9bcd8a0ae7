"""cps3d demo: the whole system end to end on synthetic phantoms, within a time budget."""

from __future__ import annotations

import argparse

from cps3d.cli import common
from cps3d.demo import DemoConfig
from cps3d.phantoms.params import SIZES

COMMAND = "demo"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        COMMAND,
        help="run everything end to end on synthetic phantoms (within 15 minutes on 2 CPU cores by default)",
        description="Generate synthetic abdominal CT phantoms (a few labeled, many unlabeled, a labeled test set), "
        "check, fingerprint, plan and preprocess them, train the supervised baseline and CPS for the same number of "
        "iterations, predict the test scans (step 0.7, no TTA; CPS also with the paper's forced spacing) under the "
        "efficiency profiler, evaluate with the FLARE 2022 rules, and write WORKDIR/report.md. Running it again "
        "with the same work dir reuses what is done.",
    )
    p.add_argument("--workdir", default="cps3d_demo", help="where everything goes (default: ./cps3d_demo)")
    p.add_argument("--minutes", type=float, default=15.0,
                   help="wall-clock budget of the whole run; training time and network size scale with it "
                   "(default: 15, sized for 2 CPU cores)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    # defaults are DemoConfig's (None here: "not given"), so that the two cannot disagree
    d = DemoConfig()
    p.add_argument("--labeled", type=int, help=f"labeled phantoms (default: {d.labeled})")
    p.add_argument("--unlabeled", type=int, help=f"unlabeled phantoms (default: {d.unlabeled})")
    p.add_argument("--test", type=int, help=f"held-out labeled test phantoms (default: {d.test})")
    p.add_argument("--size", choices=SIZES, help=f"phantom size (default: {d.size})")
    p.add_argument("--seed", type=int, help=f"phantom seed (default: {d.seed})")
    common.add_num_processes(p, default=2, what="processes for data preparation and evaluation")
    common.add_no_progress(p)
    return p


def run(args: argparse.Namespace) -> int:
    from cps3d.demo import run_demo

    given = {k: getattr(args, k) for k in ("labeled", "unlabeled", "test", "size", "seed")
             if getattr(args, k) is not None}
    config = DemoConfig(workdir=args.workdir, minutes=args.minutes, device=args.device,
                        num_processes=args.num_processes, progress=not args.no_progress, **given)
    path, table = run_demo(config)
    print(table)
    print(f"\nReport: {path}")
    return 0
