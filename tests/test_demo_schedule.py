"""The demo's training schedule (budget -> epochs and the lambda ramp) and its list of organs not learned, against
hand computations."""

import pytest

from cps3d.demo import WINDOW_COST, not_learned, sliding_windows, training_schedule
from cps3d.training.schedules import cps_lambda


@pytest.mark.parametrize("minutes, t_sup, t_cps, cps_minutes, iters, epochs", [
    # 15 min: training 0.92 x 15 = 13.8 min; costs 0.8 (CPS) and 1.4 x 0.2 = 0.28 (supervised) -> CPS gets
    # 13.8 x 0.8 / 1.08 = 10.2222 min = 613.3 s / 0.8 s = 766.7 -> 766 iterations -> 38 per epoch, 20 epochs
    (15, 0.2, 0.8, 10.2222, 38, 20),
    # a 3.4x slower machine: the same share, 613.3 / 2.72 = 225.5 -> 225 iterations -> 11 per epoch, 20 epochs
    (15, 0.68, 2.72, 10.2222, 11, 20),
    # 1 minute: training 0.92 min, CPS 0.92 x 0.8 / 1.08 = 0.68148 min = 40.9 s / 0.8 s = 51 iterations -> 10 per
    # epoch (the minimum), 5 epochs
    (1, 0.2, 0.8, 0.68148, 10, 5),
    # a fast step: 13.8 x 0.03 / (0.03 + 0.014) = 9.4091 min = 564.5 s / 0.03 s = 18818 iterations -> 50 per epoch
    (15, 0.01, 0.03, 9.4091, 50, 376),
])
def test_schedule_sizes_epochs_and_the_lambda_ramp(minutes, t_sup, t_cps, cps_minutes, iters, epochs):
    s = training_schedule(minutes, "cpu", t_sup, t_cps)
    assert s["cps_minutes"] == pytest.approx(cps_minutes, rel=1e-4)
    assert (s["iters_per_epoch"], s["expected_epochs"]) == (iters, epochs)
    assert s["lambda_start_epoch"] == 0 and s["lambda_ramp_epochs"] == max(1, epochs // 2)
    lam = [cps_lambda(e, 0.5, s["lambda_ramp_epochs"], s["lambda_start_epoch"]) for e in range(epochs)]
    assert lam[0] == 0 and lam[-1] == 0.5  # the paper's ramp from 0, at full weight from half of the run on
    assert s["max_epochs"] == 100 * epochs  # the clock stops training, not the epoch count


def test_schedule_reserves_time_for_predicting_and_scoring_the_test_scans():
    # 4000 windows x WINDOW_COST passes of 10 ms + 60 scans x runs scored at 2 supervised steps of 0.2 s
    predict_s = 4000 * WINDOW_COST * 0.01
    after = (predict_s + 60 * 2 * 0.2) / 60
    s = training_schedule(15, "cpu", 0.2, 0.8, windows=4000, t_window=0.01, scored=60)
    # training 13.8 min less that, CPS its share 0.8 / 1.08
    assert s["cps_minutes"] == pytest.approx((13.8 - after) * 0.8 / 1.08, rel=1e-6)
    assert s["prediction_windows"] == 4000 and s["seconds_per_iteration"]["window"] == 0.01
    # the windows, not the training step, set the prediction's share: twice the windows, twice the reserve for it
    more = training_schedule(15, "cpu", 0.2, 0.8, windows=8000, t_window=0.01, scored=60)
    assert s["cps_minutes"] - more["cps_minutes"] == pytest.approx(predict_s / 60 * 0.8 / 1.08, rel=1e-6)
    # a machine twice as slow predicts and scores twice as long
    slow = training_schedule(15, "cpu", 0.4, 1.6, windows=4000, t_window=0.02, scored=60)
    assert slow["cps_minutes"] == pytest.approx((13.8 - 2 * after) * 1.6 / 2.16, rel=1e-6)
    # the floor of half a minute of training holds however many scans there are
    assert training_schedule(15, "cpu", 0.2, 0.8, windows=10 ** 7, t_window=0.01)["cps_minutes"] == \
        pytest.approx(0.5 * 0.8 / 1.08)


def test_schedule_subtracts_the_time_already_spent():
    # 1.5 minutes spent on phantoms and preprocessing: training 13.8 - 1.5 = 12.3 min, CPS 12.3 x 0.8 / 1.08
    s = training_schedule(15, "cpu", 0.2, 0.8, elapsed_minutes=1.5)
    assert s["cps_minutes"] == pytest.approx(9.1111, rel=1e-4)
    # with 60 scans x runs to score too (2 steps of 0.2 s each = 0.4 min): 13.8 - 1.5 - 0.4 = 11.9 min, CPS 8.8148 min
    both = training_schedule(15, "cpu", 0.2, 0.8, scored=60, elapsed_minutes=1.5)
    assert both["cps_minutes"] == pytest.approx(8.8148, rel=1e-4)
    # a budget already spent still trains half a minute
    assert training_schedule(15, "cpu", 0.2, 0.8, elapsed_minutes=20)["cps_minutes"] == pytest.approx(0.5 * 0.8 / 1.08)


def test_sliding_windows_counts_nnunets_windows_by_hand(tiny_project, tmp_path):
    import copy

    import numpy as np
    import SimpleITK as sitk

    from cps3d.files import read_json
    from cps3d.inference import PRESETS

    # a scan of 3 slices of 10 x 7 voxels (array order z, y, x), 2 mm slices of 1 x 1 mm pixels
    image = sitk.GetImageFromArray(np.zeros((3, 10, 7), np.float32))
    image.SetSpacing((1.0, 1.0, 2.0))
    path = tmp_path / "scan_0000.nii.gz"
    sitk.WriteImage(image, str(path))
    plans = copy.deepcopy(read_json(tiny_project.preprocessed_root / tiny_project.dataset_name / "cps3dPlans.json"))
    plans["transpose_forward"] = plans["transpose_backward"] = [0, 1, 2]
    full = plans["configurations"]["3d_fullres"]
    full.update(patch_size=[2, 8, 8], spacing=[2.0, 1.0, 1.0])
    plans["configurations"]["2d"] = dict(copy.deepcopy(full), patch_size=[8, 8], spacing=[0.5, 1.0])
    # 2D at 0.5 x 1 mm: each slice becomes 20 x 7, padded to 20 x 8; steps of 0.7 x 8 = 5.6 voxels: along y
    # ceil((20 - 8) / 5.6) + 1 = 4 windows, along x 1; 4 per slice x 3 slices
    assert sliding_windows([path], plans, "2d") == 12
    # 3D at its own spacing: z 3 (patch 2) -> ceil(1 / 1.4) + 1 = 2, y 10 -> 2, x 7 -> padded 8 -> 1
    assert sliding_windows([path], plans, "3d_fullres") == 4
    # the paper's forced spacing tells the network the pixels are 0.75 mm: 15 x 5 -> 15 x 8, ceil(7 / 5.6) + 1 = 3
    # windows per slice; 2D keeps the 3 slices whatever spacing the slices are assumed to have
    assert sliding_windows([path], plans, "2d", PRESETS["paper"]) == 9
    assert sliding_windows([path, path], plans, "2d") == 24


def test_not_learned_lists_organs_below_the_threshold_in_every_run():
    def summary(**dsc):
        return {"per_target": {o: {"DSC_mean": v} for o, v in dsc.items()}}

    runs = {"Baseline": summary(liver=0.9, pancreas=0.1, adrenal=0.0, spleen=0.19),
            "CPS": summary(liver=0.8, pancreas=0.3, adrenal=0.05, spleen=0.2)}
    assert not_learned(runs) == ["adrenal"]
    assert not_learned(runs, threshold=0.5) == ["pancreas", "adrenal", "spleen"]
