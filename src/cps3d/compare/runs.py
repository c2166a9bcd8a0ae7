"""Running the comparison's trainings: one run per (labeled count, seed, method), each a resumable sequence of steps.

A run trains through :func:`cps3d.training.run.train`, predicts the evaluated cases and scores them; each step leaves
a marker in the run's folder (``runs/k<count>_s<seed>_<method>/``) holding the key of its settings, and a rerun
skips the steps whose marker matches: a finished run (``result.json``) is not touched, a trained model is not
trained again, and a training that was killed goes on from its latest checkpoint. Changed settings change the key,
and the run starts over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cps3d.files import json_digest, read_json, write_json

log = logging.getLogger(__name__)

CURVES = ("train_sup_losses", "train_cps_losses", "lambda", "mean_fg_dice", "pseudo_fg_fraction",
          "pseudo_confident_fraction")


def settings_key(settings: Any) -> str:
    return json_digest(settings)[:16]


def _marker(path: Path, key: str) -> bool:
    return path.is_file() and read_json(path).get("key") == key


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one run, predict its evaluated cases, score them; returns the result (also saved as ``result.json``).

    ``spec``: {"key", "run_dir", "labeled", "seed", "method", "train" (TrainConfig fields), "fold", "dataset",
    "pre" (the comparison's preprocessed root), "configuration", "plans_name", "device", "refs" ({split: {"labels":
    folder, "images": [files]}}), "dataset_json", "evaluate", "keep", "threads", "progress"}. Picklable, so that a
    worker process can run it.
    """
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    os.environ.setdefault("nnUNet_compile", "false")
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    from cps3d.evaluation import evaluate_folders
    from cps3d.inference import PredictConfig, predict
    from cps3d.training.config import TrainConfig
    from cps3d.training.run import model_folder, train

    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    results = run_dir / "results"
    config = TrainConfig(**spec["train"])
    model = model_folder(results, spec["dataset"], config.mode, spec["plans_name"], spec["configuration"])
    final = model / f"fold_{spec['fold']}" / "checkpoint_final.pth"
    key = spec["key"]
    trained = run_dir / "trained.json"
    if _marker(trained, key) and final.is_file():
        train_seconds = float(read_json(trained)["train_seconds"])
        log.debug("%s: already trained", run_dir.name)
    else:
        started_marker = run_dir / "started.json"
        resume = _marker(started_marker, key) and \
            (model / f"fold_{spec['fold']}" / "checkpoint_latest.pth").is_file()
        write_json(started_marker, {"key": key})
        started = time.monotonic()
        # nnU-Net's trainer prints its log to stdout as well (and to its own log file): keep it in the run folder
        with open(run_dir / "train_stdout.txt", "a" if resume else "w") as out, contextlib.redirect_stdout(out):
            train(spec["dataset"], spec["pre"], results, spec["configuration"], spec["fold"], config,
                  plans_name=spec["plans_name"], device=spec["device"], continue_training=resume,
                  overwrite=not resume, show_progress=spec["progress"])
        train_seconds = time.monotonic() - started  # of this invocation only, when it resumed a killed training
        write_json(trained, {"key": key, "train_seconds": train_seconds})
    ckpt = torch.load(final, map_location="cpu", weights_only=False)
    epochs = int(ckpt["current_epoch"])
    curves = {k: [float(x) for x in ckpt["logging"].get(k, [])] for k in CURVES}
    del ckpt
    scores = {}
    for split in spec["evaluate"]:
        pred_dir = run_dir / f"pred_{split}"
        done = pred_dir / "cps3d_compare_done.json"
        if not _marker(done, key):
            report = predict(spec["refs"][split]["images"], pred_dir, model,
                             PredictConfig(folds=(spec["fold"],), device=spec["device"], num_processes=1,
                                           progress=False, overwrite=True))
            if not report.ok:
                raise RuntimeError(f"{run_dir.name}: prediction failed for {report.failed}")
            write_json(done, {"key": key})
        res = evaluate_folders(pred_dir, spec["refs"][split]["labels"], spec["dataset_json"], progress=False)
        scores[split] = {
            "mean": res.summary["mean"],
            "per_organ": {n: {"DSC": v["DSC_mean"], "NSD": v["NSD_mean"]} for n, v in res.summary["per_target"].items()},
            "flare": {n: v["flare"] for n, v in res.summary["per_target"].items()},
            "cases": {c.case: {n: {"DSC": s[0], "NSD": s[1]} for n, s in c.scores.items()} for c in res.cases},
        }
    result = {"key": key, "labeled": spec["labeled"], "seed": spec["seed"], "method": spec["method"],
              "train": spec["train"], "fold": spec["fold"], "train_seconds": train_seconds, "epochs": epochs,
              "scores": scores, "curves": curves}
    write_json(run_dir / "result.json", result, indent=1)
    if not spec["keep"]:  # scored: the checkpoints and predictions are not needed any more
        shutil.rmtree(results, ignore_errors=True)
        for split in spec["evaluate"]:
            shutil.rmtree(run_dir / f"pred_{split}", ignore_errors=True)
    return result


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """``run_one`` in a worker process: warnings only (the parent process reports progress)."""
    logging.basicConfig(level=logging.WARNING)
    return run_one(spec)


def finished(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The saved result of ``spec``'s run if it finished with the same settings, else None."""
    path = Path(spec["run_dir"]) / "result.json"
    if path.is_file():
        result = read_json(path)
        if result.get("key") == spec["key"]:
            return result
    return None


def execute(specs: Sequence[dict[str, Any]], jobs: int = 1,
            on_done: Callable[[dict[str, Any], int, int], None] | None = None,
            train: bool = True) -> list[dict[str, Any]]:
    """Run every spec not finished yet (``jobs`` at a time in spawned processes, or in this one when 1) and return
    all results in the order of ``specs``. ``on_done(result, n_done, n_total)`` is called after each run. With
    ``train`` False nothing runs: the unfinished runs are logged and left out of the results."""
    results: dict[int, dict[str, Any]] = {}
    todo = []
    for i, s in enumerate(specs):
        r = finished(s)
        if r is None:
            todo.append(i)
        else:
            results[i] = r
    n_done = len(results)
    if n_done:
        log.info("%d of %d run(s) already done", n_done, len(specs))
    if not train:
        for i in todo:
            log.info("not done: %d labeled, seed %d, %s", specs[i]["labeled"], specs[i]["seed"], specs[i]["method"])
        return [results[i] for i in sorted(results)]
    if jobs == 1 or len(todo) <= 1:
        for i in todo:
            results[i] = run_one(specs[i])
            n_done += 1
            if on_done:
                on_done(results[i], n_done, len(specs))
    else:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            for i, r in zip(todo, pool.map(_worker, [specs[i] for i in todo])):
                results[i] = r
                n_done += 1
                if on_done:
                    on_done(r, n_done, len(specs))
    return [results[i] for i in range(len(specs))]
