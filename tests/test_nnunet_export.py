"""cps3d export: the tiny CPS model of the session fixture as a plain nnU-Net folder, run by nnU-Net's own
``nnUNetv2_predict`` entry point (a child process, nnU-Net's trainer lookup by name, nothing of cps3d imported),
whose label maps must equal ``cps3d predict --branch 1`` with nnU-Net's settings (step 0.5, mirroring, no forced
spacing, no post-processing)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cps3d.cli import main
from inference_helpers import RAS, write_scan


def _nnunet_predict_command() -> str:
    found = shutil.which("nnUNetv2_predict", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                                   os.environ.get("PATH", "")]))
    assert found is not None, "nnUNetv2_predict (nnU-Net's console script) is not installed beside python"
    return found


def test_export_runs_in_nnunets_own_predictor_and_matches_branch_1(tiny_project, tmp_path):
    out = tmp_path / "nnunet_results"
    assert main(["export", "-m", str(tiny_project.model_dir), "-o", str(out)]) == 0
    plans_name = "cps3dPlans"
    folder = out / tiny_project.dataset_name / f"nnUNetTrainer__{plans_name}__3d_fullres"
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "dataset_fingerprint.json", "fold_0",
                                                         "plans.json"]
    ours = torch.load(tiny_project.model_dir / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                      weights_only=False)
    exported = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert exported["trainer_name"] == "nnUNetTrainer" and exported["init_args"]["configuration"] == "3d_fullres"
    assert "network_weights_2" not in exported
    assert all(torch.equal(exported["network_weights"][k], v) for k, v in ours["network_weights"].items())

    scans = tmp_path / "scans"
    write_scan(scans / "aniso_0000.nii.gz", (34, 36, 16), (1.2, 1.3, 5.0), seed=1)
    write_scan(scans / "ras_0000.nii.gz", (40, 36, 20), (1.5, 1.5, 3.0), (10.0, -20.0, 5.0), RAS, seed=2)
    env = {**os.environ, "nnUNet_results": str(out), "nnUNet_raw": str(tmp_path / "raw"),
           "nnUNet_preprocessed": str(tmp_path / "pre"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([_nnunet_predict_command(), "-i", str(scans), "-o", str(tmp_path / "nnunet"),
                          "-d", tiny_project.dataset_name, "-tr", "nnUNetTrainer", "-p", plans_name,
                          "-c", "3d_fullres", "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
                          "--disable_progress_bar"], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    assert main(["predict", "-i", str(scans), "-o", str(tmp_path / "cps3d"), "-m", str(tiny_project.model_dir),
                 "--branch", "1", "--protocol", "nnunet", "--resampling", "exact", "--no-postprocess", "--device",
                 "cpu", "-np", "1", "--no-progress"]) == 0
    for name in ("aniso", "ras"):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cps3d" / f"{name}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nnunet" / f"{name}.nii.gz")))
        assert a.shape == b.shape
        assert np.array_equal(a, b), f"{name}: {(a != b).sum()} voxels differ"
        assert len(np.unique(a)) > 1  # a non-trivial map, so that equality means something


def test_export_branch_2_and_refusals(tiny_project, tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["export", "-m", str(tiny_project.model_dir), "-o", str(out), "--branch", "2"]) == 0
    ckpt_path = out / tiny_project.dataset_name / "nnUNetTrainer__cps3dPlans__3d_fullres" / "fold_0"
    exported = torch.load(ckpt_path / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    ours = torch.load(tiny_project.model_dir / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                      weights_only=False)
    assert all(torch.equal(exported["network_weights"][k], v) for k, v in ours["network_weights_2"].items())
    assert not all(torch.equal(exported["network_weights"][k], v) for k, v in ours["network_weights"].items())
    # an existing export is kept unless --overwrite; the ensemble is not one nnU-Net network
    assert main(["export", "-m", str(tiny_project.model_dir), "-o", str(out)]) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert main(["export", "-m", str(tiny_project.model_dir), "-o", str(out), "--overwrite"]) == 0
    with pytest.raises(SystemExit) as exit_info:  # a usage error, reported by argparse
        main(["export", "-m", str(tiny_project.model_dir), "-o", str(out), "--branch", "ensemble"])
    assert exit_info.value.code == 2
    assert main(["export", "-m", str(tmp_path / "missing"), "-o", str(out)]) == 2
    assert "model folder not found" in capsys.readouterr().err
