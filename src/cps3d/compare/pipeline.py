"""``run_compare``: the whole comparison on a planned and preprocessed dataset, resumable, with its reports."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cps3d.compare.config import CompareConfig
from cps3d.compare.report import summarize, write_outputs
from cps3d.compare.runs import execute, settings_key
from cps3d.compare.splits import (
    Split,
    check_split,
    check_unlabeled,
    declare_split,
    linked_preprocessed,
    nested_subsets,
    training_folds,
)
from cps3d.devices import resolve_device

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"


@dataclass(frozen=True)
class CompareResult:
    """``summary``: everything ``compare.json`` holds; ``markdown``: the tables; ``files``: {kind: path} of the
    reports written (json, csv, md, png)."""

    summary: dict[str, Any]
    markdown: str
    files: dict[str, Path]


def resolve_split(ds, output: Path, split: Split | None, holdout: int | None, validation: int,
                  split_seed: int) -> Split:
    """The split to use: ``split`` if given, else the one saved in ``output`` by an earlier run, else a new one
    (:func:`declare_split`); it is checked against the dataset and saved to ``output/split.json``."""
    saved = output / SPLIT_FILE
    if split is None and saved.is_file():
        split = Split.load(saved)
        log.info("Reusing the split of %s (%d training, %d validation, %d test cases)", saved, len(split.pool),
                 len(split.validation), len(split.test))
        where = str(saved)
    elif split is None:
        split = declare_split(ds, holdout, validation, split_seed)
        where = "the declared split"
    else:
        where = "the given split"
    check_split(split, ds, where)
    output.mkdir(parents=True, exist_ok=True)
    split.save(saved)
    return split


def extra_cases(ds, folder: str | os.PathLike) -> dict[str, dict]:
    """The labeled cases of the dataset ``folder`` scored as ``extra``; ValueError unless its labels, channels and
    file ending are the dataset's (the models and ``ds``'s dataset.json must fit them), or if it has none."""
    from cps3d.dataset import RawDataset

    other = RawDataset.load(folder)
    for what, mine, theirs in (("labels", ds.dataset_json["labels"], other.dataset_json["labels"]),
                               ("channels", ds.num_channels, other.num_channels),
                               ("file ending", ds.file_ending, other.file_ending)):
        if mine != theirs:
            raise ValueError(f"extra cases {other.folder}: its {what} ({theirs}) are not those of {ds.folder} "
                             f"({mine})")
    cases = other.labeled_cases()
    if not cases:
        raise ValueError(f"extra cases {other.folder}: no labeled case in imagesTr/labelsTr")
    return cases


def _references(ds, split: Split, output: Path, evaluate: tuple[str, ...],
                extra: str | None = None) -> dict[str, dict[str, Any]]:
    """``{split name: {"labels": folder holding only its reference files, "images": [channel files]}}``."""
    labeled, tests = ds.labeled_cases(), ds.test_cases()
    refs = {}
    for name in evaluate:
        if name == "extra":
            assert extra is not None  # CompareConfig requires the folder with 'extra'
            source = extra_cases(ds, extra)
            ids = tuple(sorted(source))
        elif name == "val":
            if not split.validation:
                raise ValueError("evaluate 'val' needs validation cases; the split has none (declare some with "
                                 "--validation N)")
            ids, source = split.validation, labeled
        else:
            ids, source = split.test, (labeled if split.test_source == "labelsTr" else tests)
        folder = output / f"labels_{name}"
        folder.mkdir(parents=True, exist_ok=True)
        wanted = {f"{c}{ds.file_ending}": Path(source[c]["label"]).resolve() for c in ids}
        for f in folder.iterdir():  # the folder is the comparison's: only the references of this split stay
            if f.name not in wanted or not f.is_symlink() or f.resolve() != wanted[f.name]:
                f.unlink()
        for fname, target in wanted.items():
            if not (folder / fname).exists():
                (folder / fname).symlink_to(target)
        refs[name] = {"labels": str(folder), "images": [str(p) for c in ids for p in source[c]["images"]]}
    return refs


def run_compare(ds, preprocessed_root: str | os.PathLike, output: str | os.PathLike,
                config: CompareConfig | None = None, split: Split | None = None, holdout: int | None = None,
                validation: int = 0, split_seed: int = 0, header: str = "", train: bool = True) -> CompareResult:
    """Train every method on the same labeled cases for every labeled count and seed, score the held-out cases,
    and write ``compare.json``, ``compare.csv``, ``compare.md`` and ``compare.png`` to ``output``.

    ``ds``: the raw dataset (:class:`cps3d.dataset.RawDataset`), planned and preprocessed under
    ``preprocessed_root`` for ``config.configuration``. The split: ``split``, else ``output/split.json`` from an
    earlier run, else a new one from ``holdout``, ``validation`` and ``split_seed`` (see
    :func:`cps3d.compare.splits.declare_split`). Every finished step is kept under ``output`` and skipped by a
    rerun with the same settings. ``header``: Markdown put above the tables. Raises ValueError / FileNotFoundError
    naming the problem (no unlabeled scans, too few labeled cases, a labeled count larger than the training set, a
    missing plan or preprocessed configuration) before anything trains. With ``train`` False nothing runs: the
    reports cover the runs already finished (the seeds that every method finished).
    """
    from cps3d.planning import load_plans

    config = config if config is not None else CompareConfig()
    started = time.monotonic()
    output = Path(output).expanduser().resolve()
    check_unlabeled(ds)
    split = resolve_split(ds, output, split, holdout, validation, split_seed)
    try:
        plans = load_plans(preprocessed_root, ds.name, config.plans_name)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}; run 'cps3d plan' and 'cps3d preprocess' first") from e
    if config.configuration not in plans["configurations"]:
        raise ValueError(f"configuration {config.configuration!r} is not in the plans {config.plans_name}.json of "
                         f"{ds.name} (has: {', '.join(sorted(plans['configurations']))})")
    counts = tuple(config.labeled) if config.labeled is not None else (len(split.pool),)
    subsets = nested_subsets(split.pool, counts, config.seeds)
    folds, splits = training_folds(split, subsets, counts, config.seeds)
    pre = linked_preprocessed(preprocessed_root, ds.name, output / "preprocessed_split", splits)
    refs = _references(ds, split, output, config.evaluate, config.extra)
    device = str(resolve_device(config.device))
    plan = plans["configurations"][config.configuration]
    common = {"dataset": ds.name, "pre": str(pre), "configuration": config.configuration,
              "plans_name": config.plans_name, "device": device, "refs": refs,
              "dataset_json": str(ds.folder / "dataset.json"), "evaluate": list(config.evaluate),
              "keep": config.keep, "progress": config.progress and config.jobs == 1,
              "threads": config.threads if config.threads is not None else (1 if config.jobs > 1 else 0)}

    def spec(k: int, seed: int, method: str, train: dict[str, Any]) -> dict[str, Any]:
        fold = folds[(k, seed)]
        settings = {"train": train, "split": splits[fold], "plan": settings_key(plan), "device": device,
                    "evaluate": {n: sorted(Path(f).name for f in r["images"]) for n, r in refs.items()}}
        if config.extra is not None:  # only then, so that the runs of comparisons without it keep their keys
            settings["extra"] = str(Path(config.extra).expanduser().resolve())
        return {**common, "key": settings_key(settings), "labeled": k, "seed": seed, "method": method,
                "train": train, "fold": fold, "run_dir": str(output / "runs" / f"k{k}_s{seed}_{method}")}

    baseline = config.baseline
    total = len(counts) * len(config.seeds) * len(config.methods)

    def on_done(r: dict[str, Any], n: int, _: int) -> None:
        log.info("[%d/%d] %d labeled, seed %d, %s: mean DSC %.3f (%d epochs, %.0f s)", n, total, r["labeled"],
                 r["seed"], r["method"], r["scores"][config.evaluate[0]]["mean"]["DSC_mean"], r["epochs"],
                 r["train_seconds"])

    log.info("%d run(s): %s x labeled %s x seeds %s; results in %s", total, ", ".join(config.methods),
             list(counts), list(config.seeds), output)
    limit = {} if config.max_minutes is None else {"max_minutes": config.max_minutes}
    first = [spec(k, s, m, {**config.run_config(m, s), **limit}) for k in counts for s in config.seeds
             for m in config.methods if not limit or m != baseline]
    results = execute(first, config.jobs, on_done, train)
    if config.max_minutes is not None:
        # equal iterations: each baseline trains as many epochs as the shortest CPS run of its labeled cases
        second = []
        for k in counts:
            for s in config.seeds:
                done_epochs = [r["epochs"] for r in results if r["labeled"] == k and r["seed"] == s]
                if len(done_epochs) < len(config.methods) - 1:
                    continue  # train=False and a CPS run of these labeled cases is missing
                epochs = min(done_epochs)
                second.append(spec(k, s, baseline, {**config.run_config(baseline, s), "epochs": epochs}))
        done = len(results)
        results += execute(second, config.jobs, lambda r, n, t: on_done(r, done + n, t), train)
    summary = summarize(results, config, split, counts, subsets, started_seconds=time.monotonic() - started)
    summary["plan"] = {"configuration": config.configuration, "patch_size": plan["patch_size"],
                       "batch_size": plan["batch_size"], "spacing": plan["spacing"],
                       "features": plan["architecture"]["arch_kwargs"]["features_per_stage"]}
    summary["dataset"] = ds.name
    summary["device"] = device
    markdown, files = write_outputs(output, summary, header)
    return CompareResult(summary, markdown, files)
