"""Benchmark: does CPS beat the supervised baseline? A seeded comparison on phantoms with few labeled scans.

Protocol (the paper's ablation, Table 3, at toy scale):

- one phantom dataset: a pool of ``--pool`` labeled training phantoms (5 by default, whatever ``--labeled`` says, so
  that ``--labeled 2`` trains and scores exactly the 2-labeled runs of the default benchmark), ``--val`` labeled
  validation phantoms that never train,
  ``--unlabeled`` unlabeled phantoms and ``--test`` held-out test phantoms (``imagesTs``/``labelsTs``);
- for each labeled count k in ``--labeled`` and each seed: the k training cases are the first k of a seeded random
  order of the pool (nested: the 2 cases of seed s are among its 5), written as one fold of ``splits_final.json``
  whose validation part is the validation phantoms;
- each method trains on that fold for the same number of iterations (equal iterations, the paper's comparison; the
  wall time is reported too): the supervised ``baseline``, ``cps-paper`` (the paper's objective: Dice+CE cross
  terms, lambda 0 -> 0.5 over the first half of the run) and ``cps`` (the project's default settings);
- every model predicts the evaluation cases (step 0.7, no TTA, network 1, largest-component post-processing) and is
  scored with DSC and NSD under the FLARE 2022 rules; the tables give the mean and standard deviation over seeds and
  every seed's value.

Settings are chosen on validation phantoms, never on the test phantoms: ``--evaluate extra`` scores ``--extra-val``
(20) labeled phantoms of a separate draw (``--extra-seed``), in no fingerprint and no split, so they change no
training; ``--evaluate val`` the ``--val`` (3) validation phantoms of the dataset itself (too few to resolve
differences of 0.02). The default ``--evaluate test`` is the final report.

    python benchmarks/ssl_gain.py --quick                     # a few minutes: 1 seed, 2 labeled cases, short runs
    python benchmarks/ssl_gain.py --json ssl_gain.json        # the README's table: 3 seeds, 2 and 5 labeled cases
    python benchmarks/ssl_gain.py --evaluate extra --method "ce09:cps_loss=ce,confidence=0.9"  # a variant, on val

The comparison itself is the library's (:func:`cps3d.compare.run_compare`, also ``cps3d compare``): this script
makes the phantoms, plans and preprocesses them, declares the split (the first phantoms of the labeled pool train, the
rest validate) and reports. Runs are resumable: every finished (labeled count, seed, method) keeps its result under
``--work-dir`` and a rerun with the same settings skips it. ``--jobs 2`` trains two runs at a time, one torch thread
each.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, machine_line, publish  # noqa: E402
from cps3d.compare import METHODS, OPTIMIZERS, CompareConfig, Split, parse_method, run_compare  # noqa: E402
from cps3d.demo import CONFIGURATION, INTENSITY  # noqa: E402
from cps3d.files import write_json  # noqa: E402

DATASET_ID, NAME = 950, "SSLGain"


# ------------------------------------------------------------------------------------------------------ the data
def prepare(args):
    """Phantoms, fingerprint, plans and preprocessing; returns the raw dataset, the preprocessed root and the split."""
    from cps3d.dataset import RawDataset
    from cps3d.fingerprint import FingerprintConfig, ensure_fingerprint
    from cps3d.phantoms import write_dataset
    from cps3d.planning import PlanConfig, load_plans, plan_experiment
    from cps3d.preprocessing import preprocess

    work = Path(args.work_dir)
    raw, pre = work / "raw", work / "preprocessed"
    pool = args.pool
    if max(args.labeled) > pool:
        raise SystemExit(f"--labeled {max(args.labeled)} is larger than --pool {pool}: raise --pool (a new dataset)")
    folder = raw / f"Dataset{DATASET_ID:03d}_{NAME}"
    data_settings = {"pool": pool, "val": args.val, "unlabeled": args.unlabeled, "test": args.test,
                     "size": args.size, "seed": args.phantom_seed}
    stamp = work / "data.json"
    if not _stamp_matches(stamp, data_settings):
        if work.exists():
            for sub in ("raw", "preprocessed", "preprocessed_split", "results", "runs", "labels_val", "labels_test"):
                shutil.rmtree(work / sub, ignore_errors=True)
            (work / "split.json").unlink(missing_ok=True)
        write_dataset(raw, pool + args.val, args.unlabeled, args.test, seed=args.phantom_seed, size=args.size,
                      dataset_id=DATASET_ID, name=NAME, num_processes=args.jobs, progress=False)
        write_json(stamp, data_settings)
    ds = RawDataset.load(folder)
    fp = ensure_fingerprint(ds, pre, FingerprintConfig(args.intensity), args.jobs, progress=False)
    plan_config = PlanConfig(configurations=(args.configuration,), base_features=args.features,
                             max_features=args.max_features, n_stages=args.stages,
                             patch_size=tuple(args.patch) if args.patch else None, batch_size=args.batch)
    plan_stamp = work / "plan.json"
    if not _stamp_matches(plan_stamp, asdict(plan_config)):
        plan_experiment(raw, pre, ds.name, plan_config, fp["cps3d"])
        write_json(plan_stamp, asdict(plan_config))
    plans = load_plans(pre, ds.name)
    preprocess(ds, pre, plans, args.configuration, args.jobs, progress=False)
    # phantoms are independent draws: the first ones of the pool train, the last --val ones validate
    cases = sorted(ds.labeled_cases())
    split = Split(pool=tuple(cases[:pool]), validation=tuple(cases[pool:]), test=tuple(sorted(ds.test_cases())))
    return ds, pre, split


def extra_validation(args) -> str | None:
    """The folder of the separately drawn validation phantoms (written on first use), when ``--evaluate`` asks for
    them; None otherwise."""
    from cps3d.phantoms import write_dataset

    if "extra" not in args.evaluate:
        return None
    if args.extra_val < 1:
        raise SystemExit("--evaluate extra needs --extra-val of at least 1")
    if args.extra_seed == args.phantom_seed:
        raise SystemExit(f"--extra-seed {args.extra_seed} is the dataset's --phantom-seed: the extra phantoms would be "
                         "its training phantoms")
    root = Path(args.work_dir) / "raw_extra"
    folder = root / f"Dataset{DATASET_ID + 1:03d}_ExtraVal"
    settings = {"extra_val": args.extra_val, "size": args.size, "seed": args.extra_seed}
    stamp = Path(args.work_dir) / "extra.json"
    if not _stamp_matches(stamp, settings):
        write_dataset(root, args.extra_val, 0, 0, seed=args.extra_seed, size=args.size, dataset_id=DATASET_ID + 1,
                      name="ExtraVal", num_processes=args.jobs, progress=False, overwrite=folder.exists())
        write_json(stamp, settings)
    return str(folder)


def _stamp_matches(stamp: Path, settings: dict) -> bool:
    """Whether ``stamp`` (written by :func:`cps3d.files.write_json` when a step finished) records ``settings``;
    compared as JSON, so that tuples in the settings match the lists read back."""
    return stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(settings))


def header(args, summary: dict, methods: dict, wall: float) -> str:
    plan = summary["plan"]
    runs = summary["runs"]
    return (f"## CPS against the supervised baseline ({machine_line(machine_info('cpu'))})\n\n"
            f"Phantoms `{args.size}`, configuration `{args.configuration}` (patch {plan['patch_size']}, "
            f"batch {plan['batch_size']} labeled + as many unlabeled, features {plan['features']}), "
            f"{args.unlabeled} unlabeled, {args.val} validation and {args.test} test phantoms"
            + (f" (and {args.extra_val} extra validation phantoms of phantom seed {args.extra_seed})"
               if "extra" in args.evaluate else "") + "; every method trains "
            f"{args.epochs} x {args.iters} iterations with SGD {OPTIMIZERS[args.optimizer]}"
            + (f", the rate falling to 0 over the last {args.lr_final_decay:g} of the run" if args.lr_final_decay else "")
            + ", intensity statistics "
            f"`{args.intensity}`. Methods: "
            + "; ".join(f"`{m}` = {v}" for m, v in methods.items())
            + f". Training time of all runs: {sum(r['train_seconds'] for r in runs) / 60:.0f} min"
            + ("" if args.report_only else f"; wall time of this invocation: {wall / 60:.1f} min") + ".\n\n"
            f"Command: `python benchmarks/ssl_gain.py {' '.join(sys.argv[1:])}`\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--labeled", type=int, nargs="+", default=[2, 5], help="labeled counts (default 2 5)")
    p.add_argument("--pool", type=int, default=5, help="labeled training phantoms the subsets are drawn from "
                   "(default 5; it shapes the dataset, its fingerprint and plans, so it stays fixed when --labeled "
                   "changes)")
    p.add_argument("--unlabeled", type=int, default=24)
    p.add_argument("--val", type=int, default=3, help="labeled validation phantoms (never train)")
    p.add_argument("--test", type=int, default=20, help="held-out test phantoms (default 20). They are not part "
                   "of the fingerprint, so their number changes no training; the first 4 are those of the earlier "
                   "default of 4")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", default="small", help="phantom size (default small)")
    p.add_argument("--phantom-seed", type=int, default=0)
    p.add_argument("--configuration", default=CONFIGURATION)
    p.add_argument("--intensity", default=INTENSITY, help=f"fingerprint intensity statistics: global, body or "
                   f"foreground (default: {INTENSITY}, as the demo)")
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default="short",
                   help="short: SGD lr 0.1, momentum 0.9 (the demo's, default); nnunet: lr 0.01, momentum 0.99")
    p.add_argument("--lr-final-decay", type=float, default=0.0, metavar="SHARE",
                   help="every method's learning rate falls linearly to 0 over the last SHARE of its run (default 0, "
                   "off; the demo's protocol uses cps3d.demo.FINAL_DECAY)")
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--max-features", type=int, default=128)
    p.add_argument("--stages", type=int, default=None)
    p.add_argument("--patch", type=int, nargs="+", default=None)
    p.add_argument("--batch", type=int, default=4, help="labeled batch (unlabeled: the same; default 4, as the demo "
                   "on a CPU; the paper's 2D: 12)")
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--iters", type=int, default=25, help="iterations per epoch")
    p.add_argument("--methods", nargs="*", default=list(METHODS), help=f"of {', '.join(METHODS)}")
    p.add_argument("--method", action="append", default=[], metavar="NAME:key=value,...",
                   help="an extra CPS variant (TrainConfig fields), may be repeated")
    p.add_argument("--evaluate", nargs="+", default=["test"], choices=["extra", "val", "test"],
                   help="which phantoms to score (the first is reported): test, the --val validation phantoms, or "
                   "the --extra-val ones; choose settings on extra or val only")
    p.add_argument("--extra-val", type=int, default=20, help="separately drawn labeled validation phantoms scored by "
                   "--evaluate extra (default 20; in no fingerprint and no split)")
    p.add_argument("--extra-seed", type=int, default=7, help="phantom seed of the --extra-val phantoms (default 7, "
                   "not the dataset's)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at once (one torch thread each when > 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: 1 when --jobs > 1)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: report the runs already finished under --work-dir (and list the missing ones)")
    p.add_argument("--quick", action="store_true", help="1 seed, 2 labeled, 10 x 20 iterations: a short check")
    p.add_argument("--work-dir", default="ssl_gain_work")
    p.add_argument("--json", default=None)
    p.add_argument("--keep", action="store_true", help="keep every run's model (WORK_DIR/runs/RUN/results) to "
                   "predict other phantoms with it later (cps3d predict -m)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the comparison's progress lines
    os.environ.setdefault("nnUNet_n_proc_DA", "0")  # augmentation in each run's process: the cores train
    os.environ.setdefault("nnUNet_compile", "false")
    if args.quick:
        args.seeds, args.labeled, args.epochs, args.iters = args.seeds[:1], args.labeled[:1], 10, 20
    methods = {m: METHODS[m] for m in args.methods}
    methods.update(parse_method(t) for t in args.method)
    started = time.monotonic()
    ds, pre, split = prepare(args)
    extra = extra_validation(args)
    train = {"epochs": args.epochs, "iters_per_epoch": args.iters, "val_iters": 1, "save_every": 10 ** 6,
             "final_validation": False, **OPTIMIZERS[args.optimizer]}
    if args.lr_final_decay:
        train["lr_final_decay"] = args.lr_final_decay
    config = CompareConfig(labeled=tuple(args.labeled), seeds=tuple(args.seeds), methods=methods, train=train,
                           evaluate=tuple(args.evaluate), extra=extra, configuration=args.configuration,
                           device=args.device,
                           jobs=args.jobs, threads=args.threads, keep=args.keep, progress=False)
    result = run_compare(ds, pre, args.work_dir, config, split=split, train=not args.report_only)
    text = header(args, result.summary, methods, time.monotonic() - started) + "\n" + result.markdown
    publish({"machine": machine_info("cpu"), "args": vars(args), "plan": result.summary["plan"],
             "results": result.summary["runs"], "summary": result.summary}, text, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
