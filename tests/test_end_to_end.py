"""The whole training pipeline through the CLI, in-process, on tiny phantoms: phantoms -> check -> plan ->
preprocess -> train CPS (3d_fullres, 2 epochs) -> resume for one more -> a short CPS run of the 2d configuration."""

import json

import pytest
import torch

from cps3d.cli import main

pytestmark = pytest.mark.slow

TINY_3D = ["--patch-size", "32", "32", "32", "--n-stages", "3", "--base-features", "4", "--max-features", "16",
           "--batch-size", "2"]
TINY_2D = ["--patch-size", "32", "32", "--n-stages", "3", "--base-features", "4", "--max-features", "16",
           "--batch-size", "4"]
QUICK = ["--iters-per-epoch", "3", "--val-iters", "1", "--device", "cpu", "--no-progress"]


def test_cli_pipeline_trains_resumes_and_runs_2d(tmp_path, capsys):
    raw, pre, res = tmp_path / "raw", tmp_path / "pre", tmp_path / "res"
    roots = ["--raw-root", str(raw), "--preprocessed-root", str(pre)]
    assert main(["phantoms", str(raw), "--labeled", "5", "--unlabeled", "5", "--test", "1", "--size", "small",
                 "--no-progress"]) == 0
    assert main(["check", "-d", "900", *roots, "--no-progress"]) == 0
    assert main(["plan", "-d", "900", *roots, "-c", "3d_fullres", *TINY_3D, "--no-progress"]) == 0
    assert main(["plan", "-d", "900", *roots, "-c", "2d", *TINY_2D, "--no-progress"]) == 0
    plans = json.loads((pre / "Dataset900_Phantoms" / "cps3dPlans.json").read_text())
    assert set(plans["configurations"]) == {"2d", "3d_fullres"}
    fp = json.loads((pre / "Dataset900_Phantoms" / "dataset_fingerprint.json").read_text())
    assert fp["cps3d"]["intensity_stats"] == "global" and fp["cps3d"]["num_unlabeled"] == 5

    assert main(["preprocess", "-d", "900", *roots, "-c", "3d_fullres", "2d", "-np", "1", "--no-progress"]) == 0
    assert "0 already done" in capsys.readouterr().out
    assert main(["preprocess", "-d", "Dataset900_Phantoms", *roots, "-c", "3d_fullres", "--no-progress"]) == 0
    assert "0 case(s) preprocessed, 10 already done" in capsys.readouterr().out

    train = ["train", "-d", "900", "--preprocessed-root", str(pre), "--results-root", str(res)]
    assert main([*train, "-c", "3d_fullres", "--epochs", "2", *QUICK]) == 0
    model = res / "Dataset900_Phantoms" / "CPSTrainer__cps3dPlans__3d_fullres"
    fold = model / "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 2 and "network_weights_2" in ckpt
    summary = json.loads((fold / "validation" / "summary.json").read_text())  # nnU-Net's final validation ran
    assert "foreground_mean" in summary
    assert (fold / "progress.png").stat().st_size > 10_000

    assert main([*train, "-c", "3d_fullres", "--epochs", "2", *QUICK]) == 2  # finished: needs --continue
    assert "--continue" in capsys.readouterr().err
    assert main([*train, "-c", "3d_fullres", "--epochs", "3", "--continue", "--no-final-validation", *QUICK]) == 0
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 3 and len(ckpt["logging"]["train_cps_losses"]) == 3

    assert main([*train, "-c", "2d", "--epochs", "1", "--no-final-validation", *QUICK]) == 0
    ckpt2d = torch.load(res / "Dataset900_Phantoms" / "CPSTrainer__cps3dPlans__2d" / "fold_0" / "checkpoint_final.pth",
                        map_location="cpu", weights_only=False)
    assert ckpt2d["init_args"]["configuration"] == "2d" and "network_weights_2" in ckpt2d


def test_cli_errors_are_clear(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    assert main(["train", "-d", "900", "--results-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--preprocessed-root" in err and "nnUNet_preprocessed" in err
    (tmp_path / "pre").mkdir()
    assert main(["train", "-d", "900", "--preprocessed-root", str(tmp_path / "pre"),
                 "--results-root", str(tmp_path)]) == 2
    assert "no dataset with id 900" in capsys.readouterr().err
