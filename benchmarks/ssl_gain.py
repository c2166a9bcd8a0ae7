"""Benchmark: does CPS beat the supervised baseline? A seeded comparison on phantoms with few labeled scans.

Protocol (the paper's ablation, Table 3, at toy scale):

- one phantom dataset: a pool of labeled training phantoms, ``--val`` labeled validation phantoms that never train,
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

Settings are chosen on the validation phantoms (``--evaluate val``), never on the test phantoms; the default
``--evaluate test`` is the final report.

    python benchmarks/ssl_gain.py --quick                     # a few minutes: 1 seed, 2 labeled cases, short runs
    python benchmarks/ssl_gain.py --json ssl_gain.json        # the README's table: 3 seeds, 2 and 5 labeled cases
    python benchmarks/ssl_gain.py --evaluate val --method "ce09:cps_loss=ce,confidence=0.9"   # a variant, on val

Runs are resumable: every finished (labeled count, seed, method) keeps its result under ``--work-dir`` and a rerun
with the same settings skips it. ``--jobs 2`` trains two runs at a time, one torch thread each.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, machine_line, markdown_table, publish  # noqa: E402
from cps3d.demo import CONFIGURATION, CPS_OBJECTIVE, INTENSITY, SHORT_RUN_OPTIMIZER  # noqa: E402

DATASET_ID, NAME = 950, "SSLGain"
# the methods compared: TrainConfig fields on top of the shared protocol (schedule and optimizer)
METHODS: dict[str, dict] = {
    "baseline": {"mode": "supervised"},
    "cps-paper": {"mode": "cps", "cps_loss": "dice_ce", "confidence": 0.0},
    "cps": {"mode": "cps", **CPS_OBJECTIVE},
}
OPTIMIZERS = {"short": SHORT_RUN_OPTIMIZER, "nnunet": {"initial_lr": 0.01, "momentum": 0.99}}


def parse_method(text: str) -> tuple[str, dict]:
    """``NAME:key=value,key=value`` -> (NAME, {key: value}); values parsed as JSON where they can be."""
    name, _, rest = text.partition(":")
    overrides: dict = {"mode": "cps"}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides


def _key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------ the data
def prepare(args) -> dict:
    """Phantoms, fingerprint, plans, preprocessing and the splits; returns what the runs need."""
    import numpy as np

    from cps3d.dataset import RawDataset
    from cps3d.files import write_json
    from cps3d.fingerprint import FingerprintConfig, ensure_fingerprint
    from cps3d.phantoms import write_dataset
    from cps3d.planning import PlanConfig, load_plans, plan_experiment
    from cps3d.preprocessing import preprocess

    work = Path(args.work_dir)
    raw, pre = work / "raw", work / "preprocessed"
    pool = max(args.labeled)
    folder = raw / f"Dataset{DATASET_ID:03d}_{NAME}"
    data_settings = {"pool": pool, "val": args.val, "unlabeled": args.unlabeled, "test": args.test,
                     "size": args.size, "seed": args.phantom_seed}
    stamp = work / "data.json"
    if not stamp.is_file() or json.loads(stamp.read_text()) != data_settings:
        if work.exists():
            for sub in ("raw", "preprocessed", "results", "runs"):
                shutil.rmtree(work / sub, ignore_errors=True)
        write_dataset(raw, pool + args.val, args.unlabeled, args.test, seed=args.phantom_seed, size=args.size,
                      dataset_id=DATASET_ID, name=NAME, num_processes=args.jobs, progress=False)
        stamp.write_text(json.dumps(data_settings))
    ds = RawDataset.load(folder)
    fp = ensure_fingerprint(ds, pre, FingerprintConfig(args.intensity), args.jobs, progress=False)
    plan_config = PlanConfig(configurations=(args.configuration,), base_features=args.features,
                             max_features=args.max_features, n_stages=args.stages,
                             patch_size=tuple(args.patch) if args.patch else None, batch_size=args.batch)
    plan_stamp = work / "plan.json"
    if not plan_stamp.is_file() or json.loads(plan_stamp.read_text()) != asdict(plan_config):
        plan_experiment(raw, pre, ds.name, plan_config, fp["cps3d"])
        plan_stamp.write_text(json.dumps(asdict(plan_config)))
    plans = load_plans(pre, ds.name)
    preprocess(ds, pre, plans, args.configuration, args.jobs, progress=False)

    cases = sorted(ds.labeled_cases())
    train_pool, val = cases[:pool], cases[pool:]
    folds, splits = {}, []
    for seed in args.seeds:
        order = [train_pool[i] for i in np.random.default_rng(seed).permutation(pool)]
        for k in args.labeled:
            folds[(k, seed)] = len(splits)
            splits.append({"train": order[:k], "val": val})
    write_json(pre / ds.name / "splits_final.json", splits)
    # reference folders holding only the cases each evaluation scores
    refs = {}
    for split, ids in (("val", val), ("test", sorted(ds.test_cases()))):
        ref = work / f"labels_{split}"
        ref.mkdir(exist_ok=True)
        source = ds.labeled_cases() if split == "val" else ds.test_cases()
        for c in ids:
            target = ref / f"{c}{ds.file_ending}"
            if not target.exists():
                shutil.copyfile(source[c]["label"], target)
        refs[split] = {"labels": str(ref), "images": [source[c]["images"][0] for c in ids]}
    plan = plans["configurations"][args.configuration]
    return {"dataset": ds.name, "pre": str(pre), "folds": folds, "refs": refs, "file_ending": ds.file_ending,
            "dataset_json": str(folder / "dataset.json"), "splits": splits,
            "plan": {"patch_size": plan["patch_size"], "batch_size": plan["batch_size"],
                     "features": plan["architecture"]["arch_kwargs"]["features_per_stage"],
                     "spacing": plan["spacing"]}}


# ------------------------------------------------------------------------------------------------------ one run
def run_one(spec: dict) -> dict:
    """Train one method on one fold, predict the evaluation cases, score them; returns the result (also saved)."""
    os.environ["nnUNet_n_proc_DA"] = "0"
    os.environ.setdefault("nnUNet_compile", "false")
    import logging

    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    logging.basicConfig(level=logging.WARNING)
    from cps3d.evaluation.flare import evaluate_folders
    from cps3d.inference import PredictConfig, predict
    from cps3d.training.config import TrainConfig
    from cps3d.training.run import model_folder, train

    run_dir = Path(spec["run_dir"])
    results = run_dir / "results"
    config = TrainConfig(**spec["train"])
    started = time.monotonic()
    # nnU-Net's trainer prints its log to stdout as well: keep it in the run folder instead
    with open(run_dir / "train_stdout.txt", "w") as out, contextlib.redirect_stdout(out):
        train(spec["dataset"], spec["pre"], results, spec["configuration"], spec["fold"], config, device="cpu",
              overwrite=True, show_progress=False)
    train_seconds = time.monotonic() - started
    model = model_folder(results, spec["dataset"], config.mode, "cps3dPlans", spec["configuration"])
    ckpt = torch.load(model / f"fold_{spec['fold']}" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    curves = {k: [float(x) for x in ckpt["logging"].get(k, [])]
              for k in ("train_sup_losses", "train_cps_losses", "lambda", "mean_fg_dice", "pseudo_fg_fraction",
                        "pseudo_confident_fraction")}
    del ckpt
    out = {}
    for split in spec["evaluate"]:
        pred_dir = run_dir / f"pred_{split}"
        report = predict(spec["refs"][split]["images"], pred_dir, model,
                         PredictConfig(folds=(spec["fold"],), device="cpu", num_processes=1, progress=False,
                                       overwrite=True))
        if not report.ok:
            raise RuntimeError(f"prediction failed for {report.failed}")
        res = evaluate_folders(pred_dir, spec["refs"][split]["labels"], spec["dataset_json"], progress=False)
        out[split] = {"mean": res.summary["mean"],
                      "per_organ": {n: {"DSC": v["DSC_mean"], "NSD": v["NSD_mean"]}
                                    for n, v in res.summary["per_target"].items()}}
        shutil.rmtree(pred_dir, ignore_errors=True)
    shutil.rmtree(results, ignore_errors=True)  # the checkpoints are not needed once scored
    result = {"key": spec["key"], "labeled": spec["labeled"], "seed": spec["seed"], "method": spec["method"],
              "train": spec["train"], "train_seconds": train_seconds, "scores": out, "curves": curves}
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    return result


# ------------------------------------------------------------------------------------------------------ report
def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def report(results: list[dict], args, data: dict, methods: dict, wall: float) -> str:
    lines = []
    info = machine_info("cpu")
    split = args.evaluate[0]
    for k in args.labeled:
        rows = []
        mine = {m: {r["seed"]: r for r in results if r["labeled"] == k and r["method"] == m} for m in methods}
        mine = {m: dict(sorted(rs.items())) for m, rs in mine.items() if rs}
        if not mine:
            continue
        organs = list(next(iter(next(iter(mine.values())).values()))["scores"][split]["per_organ"])
        for metric in ("DSC", "NSD"):
            for m, rs in mine.items():
                means = [r["scores"][split]["mean"][f"{metric}_mean"] for r in rs.values()]
                rows.append([f"{m} mean {metric}", _mean_sd(means),
                             " / ".join(f"{v:.3f}" for v in means) + f" (seeds {', '.join(map(str, rs))})",
                             f"{statistics.median(r['train_seconds'] for r in rs.values()):.0f}"])
        base = mine.get("baseline", {})
        for m, rs in mine.items():
            seeds = [s for s in rs if s in base]
            if m == "baseline" or not seeds:
                continue
            diffs = [rs[s]["scores"][split]["mean"]["DSC_mean"] - base[s]["scores"][split]["mean"]["DSC_mean"]
                     for s in seeds]
            rows.append([f"{m} - baseline, mean DSC (paired by seed)", _mean_sd(diffs),
                         " / ".join(f"{v:+.3f}" for v in diffs), ""])
        lines.append(f"### {k} labeled cases ({split} phantoms)\n")
        lines.append(markdown_table(["", "mean ± sd over seeds", "per seed", "train s (median)"], rows))
        organ_rows = [[o] + [_mean_sd([r["scores"][split]["per_organ"][o]["DSC"] for r in rs.values()])
                             for rs in mine.values()] for o in organs]
        lines.append("\nPer-organ DSC (mean ± sd over seeds):\n")
        lines.append(markdown_table(["organ", *mine], organ_rows))
        lines.append("")
    head = (f"## CPS against the supervised baseline ({machine_line(info)})\n\n"
            f"Phantoms `{args.size}`, configuration `{args.configuration}` (patch {data['plan']['patch_size']}, "
            f"batch {data['plan']['batch_size']} labeled + as many unlabeled, features {data['plan']['features']}), "
            f"{args.unlabeled} unlabeled, {args.val} validation and {args.test} test phantoms; every method trains "
            f"{args.epochs} x {args.iters} iterations with SGD {OPTIMIZERS[args.optimizer]}, intensity statistics "
            f"`{args.intensity}`. Methods: "
            + "; ".join(f"`{m}` = {v}" for m, v in methods.items())
            + f". Training time of all runs: {sum(r['train_seconds'] for r in results) / 60:.0f} min"
            + ("" if args.report_only else f"; wall time of this invocation: {wall / 60:.1f} min") + ".\n\n"
            f"Command: `python benchmarks/ssl_gain.py {' '.join(sys.argv[1:])}`\n")
    return head + "\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--labeled", type=int, nargs="+", default=[2, 5], help="labeled counts (default 2 5)")
    p.add_argument("--unlabeled", type=int, default=24)
    p.add_argument("--val", type=int, default=3, help="labeled validation phantoms (never train)")
    p.add_argument("--test", type=int, default=4, help="held-out test phantoms")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", default="small", help="phantom size (default small)")
    p.add_argument("--phantom-seed", type=int, default=0)
    p.add_argument("--configuration", default=CONFIGURATION)
    p.add_argument("--intensity", default=INTENSITY, help=f"fingerprint intensity statistics: global, body or "
                   f"foreground (default: {INTENSITY}, as the demo)")
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default="short",
                   help="short: SGD lr 0.1, momentum 0.9 (the demo's, default); nnunet: lr 0.01, momentum 0.99")
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
    p.add_argument("--evaluate", nargs="+", default=["test"], choices=["val", "test"],
                   help="which phantoms to score (the first is reported); choose settings on val only")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at once (one torch thread each when > 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: 1 when --jobs > 1)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: report the runs already finished under --work-dir (and list the missing ones)")
    p.add_argument("--quick", action="store_true", help="1 seed, 2 labeled, 10 x 20 iterations: a short check")
    p.add_argument("--work-dir", default="ssl_gain_work")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.labeled, args.epochs, args.iters = args.seeds[:1], args.labeled[:1], 10, 20
    methods = {m: METHODS[m] for m in args.methods}
    methods.update(parse_method(t) for t in args.method)
    started = time.monotonic()
    data = prepare(args)
    specs = []
    for k in args.labeled:
        for seed in args.seeds:
            for m, overrides in methods.items():
                train = {"epochs": args.epochs, "iters_per_epoch": args.iters, "val_iters": 1, "save_every": 10 ** 6,
                         "final_validation": False, "seed": 1000 + 10 * seed, **OPTIMIZERS[args.optimizer],
                         **overrides}
                settings = {"train": train, "fold": data["folds"][(k, seed)], "split": data["splits"][data["folds"][(k, seed)]],
                            "plan": data["plan"], "evaluate": args.evaluate}
                run_dir = Path(args.work_dir) / "runs" / f"k{k}_s{seed}_{m}"
                specs.append({"key": _key(settings), "labeled": k, "seed": seed, "method": m, "train": train,
                              "fold": data["folds"][(k, seed)], "run_dir": str(run_dir), "dataset": data["dataset"],
                              "pre": data["pre"], "configuration": args.configuration, "refs": data["refs"],
                              "dataset_json": data["dataset_json"], "evaluate": args.evaluate,
                              "threads": args.threads if args.threads is not None else (1 if args.jobs > 1 else 0)})
    results, todo = [], []
    for s in specs:
        done = Path(s["run_dir"]) / "result.json"
        if done.is_file() and json.loads(done.read_text()).get("key") == s["key"]:
            results.append(json.loads(done.read_text()))
        else:
            Path(s["run_dir"]).mkdir(parents=True, exist_ok=True)
            todo.append(s)
    print(f"{len(specs)} runs, {len(results)} already done", flush=True)
    if args.report_only:
        for s in todo:
            print(f"not done: {s['labeled']} labeled, seed {s['seed']}, {s['method']}")
        todo = []
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        for r in pool.map(run_one, todo):
            results.append(r)
            print(f"done: {r['labeled']} labeled, seed {r['seed']}, {r['method']}: mean DSC "
                  f"{r['scores'][args.evaluate[0]]['mean']['DSC_mean']:.3f} ({r['train_seconds']:.0f} s)", flush=True)
    wall = time.monotonic() - started
    text = report(results, args, data, methods, wall)
    publish({"machine": machine_info("cpu"), "args": vars(args), "plan": data["plan"], "results": results}, text,
            args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
