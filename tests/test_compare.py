"""`cps3d compare`: held-out splits and nested labeled subsets, the paired difference and its bootstrap interval,
resuming after a kill, and the refusals of what cannot give a fair comparison."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from cps3d.cli import main
from cps3d.compare import CompareConfig, Split, bootstrap_interval, declare_split, nested_subsets, paired_summary
from cps3d.compare.splits import training_folds
from cps3d.dataset import RawDataset
from toy_data import write_toy_dataset


# ------------------------------------------------------------------------------------------------ splits, subsets
def test_declared_split_is_deterministic_and_disjoint_without_labelsTs(tmp_path):
    ds = RawDataset.load(write_toy_dataset(tmp_path, labeled=8, unlabeled=2, test=0))
    a = declare_split(ds, holdout=2, validation=1, seed=3)
    assert a == declare_split(ds, holdout=2, validation=1, seed=3)
    assert a.test_source == "labelsTr" and len(a.test) == 2 and len(a.validation) == 1 and len(a.pool) == 5
    assert set(a.pool) | set(a.validation) | set(a.test) == set(ds.labeled_cases())
    assert not (set(a.pool) & set(a.test)) and not (set(a.validation) & set(a.test))
    assert not (set(a.pool) & set(a.validation))
    others = {declare_split(ds, holdout=2, validation=1, seed=s).test for s in range(6)}
    assert len(others) > 1  # the seed chooses the held-out cases
    # the default holds out a fifth (at least one) of the labeled cases
    assert len(declare_split(ds).test) == 2


def test_declared_split_takes_labelsTs_as_the_test_set(tmp_path):
    ds = RawDataset.load(write_toy_dataset(tmp_path, labeled=4, unlabeled=2, test=2))
    s = declare_split(ds)
    assert s.test_source == "imagesTs" and s.test == ("ts_000", "ts_001")
    assert s.pool == tuple(sorted(ds.labeled_cases())) and s.validation == ()
    with pytest.raises(ValueError, match="labeled test case"):
        declare_split(ds, holdout=1)


def test_nested_subsets_are_deterministic_per_seed_and_nested():
    pool = [f"case_{i}" for i in range(10)]
    a = nested_subsets(pool, [2, 5, 10], [0, 1])
    assert a == nested_subsets(pool, [2, 5, 10], [0, 1])
    for seed in (0, 1):
        assert set(a[(2, seed)]) < set(a[(5, seed)]) < set(a[(10, seed)]) == set(pool)
        assert len(a[(2, seed)]) == 2 and len(a[(5, seed)]) == 5
    assert a[(5, 0)] != a[(5, 1)]
    # the order is numpy's seeded permutation of the pool
    assert a[(2, 1)] == [pool[i] for i in np.random.default_rng(1).permutation(10)[:2]]
    # a seed's subsets do not depend on the other counts or seeds asked for
    assert nested_subsets(pool, [5], [1])[(5, 1)] == a[(5, 1)]


def test_training_folds_hold_only_pool_cases_and_validate_on_validation_cases():
    split = Split(pool=("a", "b", "c", "d"), validation=("v",), test=("t1", "t2"))
    subsets = nested_subsets(split.pool, [1, 3], [0, 1])
    folds, splits = training_folds(split, subsets, [1, 3], [0, 1])
    assert folds == {(1, 0): 0, (3, 0): 1, (1, 1): 2, (3, 1): 3}
    for (k, seed), f in folds.items():
        assert splits[f]["train"] == subsets[(k, seed)] and splits[f]["val"] == ["v"]
        assert not set(splits[f]["train"]) & {"t1", "t2", "v"}
    no_val = Split(pool=("a", "b"), validation=(), test=("t",))
    _, s = training_folds(no_val, {(1, 0): ["b"]}, [1], [0])
    assert s == [{"train": ["b"], "val": ["b"]}]


def test_split_refuses_overlap_and_round_trips(tmp_path):
    with pytest.raises(ValueError, match="pool and test cases overlap: a"):
        Split(pool=("a", "b"), validation=(), test=("a",), test_source="labelsTr")
    s = Split(pool=("a", "b"), validation=("c",), test=("t",))
    s.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json") == s
    (tmp_path / "bad.json").write_text(json.dumps({"pool": ["a"]}))
    with pytest.raises(ValueError, match="bad.json"):
        Split.load(tmp_path / "bad.json")


# ------------------------------------------------------------------------------------------------ refusals
def test_refuses_a_dataset_without_unlabeled_scans(tmp_path):
    ds = RawDataset.load(write_toy_dataset(tmp_path, labeled=4, unlabeled=0, test=1))
    with pytest.raises(ValueError, match="imagesUnlabeled: no unlabeled scans"):
        declare_split(ds)


def test_refuses_too_few_labeled_cases_to_hold_out_a_test_set(tmp_path):
    ds = RawDataset.load(write_toy_dataset(tmp_path, labeled=2, unlabeled=1, test=0))
    with pytest.raises(ValueError, match=r"labelsTr: 2 labeled case\(s\) are too few to hold out 2 test case"):
        declare_split(ds, holdout=2)
    assert len(declare_split(ds, holdout=1).pool) == 1  # one case still trains


def test_refuses_a_labeled_count_larger_than_the_training_set():
    with pytest.raises(ValueError, match="labeled count 5 is larger than the training set: 4 labeled case"):
        nested_subsets(["a", "b", "c", "d"], [2, 5], [0])


def test_config_refuses_what_is_not_a_comparison():
    with pytest.raises(ValueError, match="exactly one supervised baseline"):
        CompareConfig(methods={"a": {"mode": "cps"}, "b": {"mode": "cps"}})
    with pytest.raises(ValueError, match="'epoch' is not a training option \\(did you mean 'epochs'\\?\\)"):
        CompareConfig(train={"epoch": 3})
    with pytest.raises(ValueError, match="'seed' is set by the comparison"):
        CompareConfig(train={"seed": 3})
    with pytest.raises(ValueError, match="method 'x': confidence"):
        CompareConfig(methods={"b": {"mode": "supervised"}, "x": {"mode": "cps", "confidence": 2.0}})
    with pytest.raises(ValueError, match="evaluate 'extra' scores the labeled cases of another dataset folder"):
        CompareConfig(evaluate=("test", "extra"))
    with pytest.raises(ValueError, match="evaluate 'extra' scores the labeled cases of another dataset folder"):
        CompareConfig(extra="somewhere")


def test_extra_cases_must_have_the_datasets_labels(tmp_path):
    from cps3d.compare.pipeline import extra_cases

    ds = RawDataset.load(write_toy_dataset(tmp_path / "a", labeled=2, unlabeled=1, test=0))
    other = write_toy_dataset(tmp_path / "b", labeled=3, unlabeled=0, test=0, seed=1, dataset_id=902)
    assert sorted(extra_cases(ds, other)) == ["toy_000", "toy_001", "toy_002"]
    dj = json.loads((other / "dataset.json").read_text())
    dj["labels"] = {"background": 0, "organ_a": 1}
    (other / "dataset.json").write_text(json.dumps(dj))
    with pytest.raises(ValueError, match=f"extra cases {other}: its labels .* are not those of {ds.folder}"):
        extra_cases(ds, other)
    empty = write_toy_dataset(tmp_path / "c", labeled=0, unlabeled=1, test=0, dataset_id=903)
    with pytest.raises(ValueError, match="no labeled case"):
        extra_cases(ds, empty)


# ------------------------------------------------------------------------------------------------ statistics
# seeds x cases: CPS and the baseline of two seeds on three test cases
CPS = np.array([[0.70, 0.50, 0.90],
                [0.60, 0.55, 0.80]])
BASE = np.array([[0.60, 0.55, 0.80],
                 [0.65, 0.45, 0.70]])


def test_paired_difference_equals_a_hand_computation():
    s = paired_summary(CPS, BASE, resamples=200, rng=0)
    # d = [[+0.10, -0.05, +0.10], [-0.05, +0.10, +0.10]]: mean 0.30 / 6, per seed 0.15 / 3 and 0.15 / 3
    assert s["mean"] == pytest.approx(0.05)
    assert s["per_seed"] == pytest.approx([0.05, 0.05])
    assert s["pairs"] == 6 and s["wins"] == 4


def test_bootstrap_interval_equals_a_hand_computation():
    d = CPS - BASE
    resamples = 7
    # the same draws by hand: case indices for every resample at once, then the mean over seeds and drawn cases
    idx = np.random.default_rng(42).integers(0, 3, size=(resamples, 3))
    means = []
    for draw in idx:
        total = sum(d[s][c] for s in range(2) for c in draw)
        means.append(total / 6)
    means.sort()
    # numpy's default quantile: linear interpolation at position q * (n - 1) of the sorted values
    def quantile(q):
        pos = q * (resamples - 1)
        lo = int(np.floor(pos))
        return means[lo] + (pos - lo) * (means[min(lo + 1, resamples - 1)] - means[lo])

    lo, hi = bootstrap_interval(d, resamples=resamples, level=0.95, rng=42)
    assert lo == pytest.approx(quantile(0.025)) and hi == pytest.approx(quantile(0.975))
    # per-case means are 0.025, 0.025 and 0.1: every resample lies between the extremes
    assert 0.025 <= lo <= hi <= 0.1


def test_bootstrap_interval_of_a_constant_difference_is_that_difference_and_seeded():
    d = np.full((3, 4), 0.02)
    assert bootstrap_interval(d, 500, rng=1) == pytest.approx((0.02, 0.02))
    noisy = np.random.default_rng(5).normal(0.0, 0.1, (2, 8))
    assert bootstrap_interval(noisy, 500, rng=1) == bootstrap_interval(noisy, 500, rng=1)
    wide = bootstrap_interval(noisy, 2000, level=0.99, rng=1)
    narrow = bootstrap_interval(noisy, 2000, level=0.5, rng=1)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


# ------------------------------------------------------------------------------------------------ end to end
TINY_TRAIN = {"epochs": 2, "iters_per_epoch": 1, "val_iters": 1, "save_every": 1, "final_validation": False}


def _user_splits(project) -> str | None:
    path = project.preprocessed_root / project.dataset_name / "splits_final.json"
    return path.read_text() if path.is_file() else None


@pytest.mark.slow
def test_a_killed_comparison_resumes_without_retraining_finished_runs(tiny_project, tmp_path, monkeypatch):
    import cps3d.training.run as training_run
    from cps3d.compare import run_compare

    ds = RawDataset.from_root(str(tiny_project.raw_root), tiny_project.dataset_name)
    # and 2 labeled cases of another dataset, scored as extra validation cases (their names are the training cases')
    extra = write_toy_dataset(tmp_path / "extra_raw", labeled=2, unlabeled=0, test=0, seed=5, dataset_id=902)
    config = CompareConfig(labeled=(2,), seeds=(0,), train=TINY_TRAIN, evaluate=("test", "extra"), extra=str(extra),
                           device="cpu", bootstrap=200, progress=False)
    out = tmp_path / "cmp"
    user_splits = _user_splits(tiny_project)
    real_train = training_run.train
    calls = []

    def killed_in_cps(*args, **kwargs):
        calls.append((args[5].mode, kwargs.get("continue_training")))
        if args[5].mode != "cps":
            return real_train(*args, **kwargs)
        # CPS is killed after its first epoch: what is left is that epoch's checkpoint_latest.pth
        args = (*args[:5], dataclasses.replace(args[5], epochs=1), *args[6:])
        trainer = real_train(*args, **kwargs)
        os.replace(os.path.join(trainer.output_folder, "checkpoint_final.pth"),
                   os.path.join(trainer.output_folder, "checkpoint_latest.pth"))
        raise KeyboardInterrupt

    monkeypatch.setattr(training_run, "train", killed_in_cps)
    with pytest.raises(KeyboardInterrupt):
        run_compare(ds, tiny_project.preprocessed_root, out, config)
    assert calls == [("supervised", False), ("cps", False)]
    base_dir = out / "runs" / "k2_s0_baseline"
    assert (base_dir / "result.json").is_file() and not (out / "runs" / "k2_s0_cps-paper" / "result.json").exists()
    base_ckpt = next(base_dir.rglob("checkpoint_final.pth"))
    before = base_ckpt.stat().st_mtime_ns
    # the user's preprocessed folder keeps its own splits; the comparison's folds are in its own linked folder
    assert _user_splits(tiny_project) == user_splits
    folds = json.loads((out / "preprocessed_split" / tiny_project.dataset_name / "splits_final.json").read_text())
    split = json.loads((out / "split.json").read_text())
    assert folds[0]["train"] == nested_subsets(split["pool"], [2], [0])[(2, 0)]
    assert split["test"] == ["ts_000", "ts_001"] and not set(folds[0]["train"]) & set(split["test"])

    calls.clear()
    monkeypatch.setattr(training_run, "train", lambda *a, **k: (calls.append((a[5].mode, k["continue_training"])),
                                                                real_train(*a, **k))[1])
    result = run_compare(ds, tiny_project.preprocessed_root, out, config)
    assert calls == [("cps", True)]  # the baseline is not trained again; CPS goes on from its latest checkpoint
    assert base_ckpt.stat().st_mtime_ns == before
    cps = json.loads((out / "runs" / "k2_s0_cps-paper" / "result.json").read_text())
    assert cps["epochs"] == 2

    # the reports: every organ and the mean, the paired difference, the files
    block = result.summary["by_labeled"]["2"]
    assert block["organs"] == ["organ_a", "organ_b"] and block["cases"] == ["ts_000", "ts_001"]
    gain = block["gains"]["cps-paper"]["DSC"]["mean"]
    runs = {r["method"]: r for r in result.summary["runs"]}
    by_hand = np.mean([np.mean([runs["cps-paper"]["scores"]["test"]["cases"][c][o]["DSC"]
                                - runs["baseline"]["scores"]["test"]["cases"][c][o]["DSC"]
                                for o in ("organ_a", "organ_b")]) for c in ("ts_000", "ts_001")])
    assert gain["mean"] == pytest.approx(by_hand) and gain["ci"][0] <= gain["mean"] + 1e-12 <= gain["ci"][1] + 2e-12
    assert gain["pairs"] == 2
    # the extra cases are scored too, against their own references
    for r in runs.values():
        assert sorted(r["scores"]["extra"]["cases"]) == ["toy_000", "toy_001"]
    refs = sorted((out / "labels_extra").iterdir())
    assert [f.resolve() for f in refs] == sorted((extra / "labelsTr").resolve().iterdir())
    for kind in ("json", "csv", "md", "png"):
        assert result.files[kind].is_file() and result.files[kind].stat().st_size > 100
    assert "cps-paper - baseline, mean DSC" in result.markdown
    assert len(result.files["csv"].read_text().splitlines()) == 1 + 3 * 2 * 2  # (2 organs + mean) x 2 metrics x 2

    # a run killed after training but before scoring is scored without training again
    (base_dir / "result.json").unlink()
    calls.clear()
    run_compare(ds, tiny_project.preprocessed_root, out, config)
    assert calls == [] and (base_dir / "result.json").is_file() and base_ckpt.stat().st_mtime_ns == before


@pytest.mark.slow
def test_cli_refuses_a_labeled_count_larger_than_the_training_set(tiny_project, tmp_path, capsys):
    code = main(["compare", "-d", tiny_project.dataset_name, "--raw-root", str(tiny_project.raw_root),
                 "--preprocessed-root", str(tiny_project.preprocessed_root), "-o", str(tmp_path / "c"),
                 "--labeled", "2", "99", "--device", "cpu", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "cps3d compare: error: labeled count 99 is larger than the training set: 6 labeled case(s)" in err
    assert not (tmp_path / "c" / "runs").exists()


@pytest.mark.slow
def test_device_cuda_is_passed_to_training_and_refused_without_cuda(tiny_project, tmp_path, monkeypatch):
    import torch

    import cps3d.training.run as training_run
    from cps3d.compare import run_compare

    ds = RawDataset.from_root(str(tiny_project.raw_root), tiny_project.dataset_name)
    config = CompareConfig(labeled=(2,), seeds=(0,), train=TINY_TRAIN, device="cuda", progress=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda' was requested but no CUDA device is available"):
        run_compare(ds, tiny_project.preprocessed_root, tmp_path / "a", config)
    seen = []

    def record(*args, **kwargs):
        seen.append(kwargs["device"])
        raise KeyboardInterrupt  # stop before anything touches a GPU

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(training_run, "train", record)
    with pytest.raises(KeyboardInterrupt):
        run_compare(ds, tiny_project.preprocessed_root, tmp_path / "b", config)
    assert seen == ["cuda"]


@pytest.mark.slow
def test_cli_passes_its_options_to_the_comparison(tiny_project, tmp_path, monkeypatch, capsys):
    import cps3d.compare as compare

    seen = {}

    def fake(ds, pre, output, config, **kwargs):
        seen.update(ds=ds.name, output=output, config=config, **kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(compare, "run_compare", fake)
    code = main(["compare", "-d", tiny_project.dataset_name, "--raw-root", str(tiny_project.raw_root),
                 "--preprocessed-root", str(tiny_project.preprocessed_root), "-o", str(tmp_path / "c"),
                 "--labeled", "2", "4", "--seeds", "2", "--methods", "baseline", "cps", "--optimizer", "short",
                 "--epochs", "3", "--iters-per-epoch", "5", "--max-minutes", "1.5", "--device", "cuda",
                 "--holdout", "1", "--jobs", "2", "--evaluate", "extra", "--extra", "elsewhere", "--no-progress"])
    assert code == 2 and "cps3d compare: error: stop here" in capsys.readouterr().err
    c = seen["config"]
    assert seen["ds"] == tiny_project.dataset_name and seen["holdout"] == 1 and seen["split"] is None
    assert c.labeled == (2, 4) and c.seeds == (0, 1) and list(c.methods) == ["baseline", "cps"]
    assert c.device == "cuda" and c.jobs == 2 and c.max_minutes == 1.5 and c.configuration == "3d_fullres"
    run = c.run_config("cps", 1)
    assert run["initial_lr"] == 0.1 and run["momentum"] == 0.9 and run["epochs"] == 3
    assert run["iters_per_epoch"] == 5 and run["seed"] == 1010 and run["cps_loss"] == "ce"
    assert run["final_validation"] is False
    assert c.evaluate == ("extra",) and c.extra == "elsewhere"
