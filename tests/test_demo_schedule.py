"""The demo's training schedule (budget -> epochs and the lambda ramp) and its list of organs not learned, against
hand computations."""

import pytest

from cps3d.demo import not_learned, training_schedule
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
    # 60 scans x runs at 14 + 2 supervised steps of 0.2 s each = 192 s = 3.2 min: training 13.8 - 3.2 = 10.6 min,
    # CPS 10.6 x 0.8 / 1.08 = 7.8519 min = 471.1 s / 0.8 s = 588 iterations -> 29 per epoch, 20 epochs
    s = training_schedule(15, "cpu", 0.2, 0.8, predictions=60)
    assert s["cps_minutes"] == pytest.approx(7.8519, rel=1e-4)
    assert (s["iters_per_epoch"], s["expected_epochs"]) == (29, 20)
    # a machine twice as slow predicts twice as long: 6.4 min, training 7.4 min, CPS 7.4 x 1.6 / 2.16 = 5.4815 min
    slow = training_schedule(15, "cpu", 0.4, 1.6, predictions=60)
    assert slow["cps_minutes"] == pytest.approx(5.4815, rel=1e-4)
    # the floor of half a minute of training holds however many scans there are
    assert training_schedule(15, "cpu", 0.2, 0.8, predictions=10 ** 4)["cps_minutes"] == pytest.approx(0.5 * 0.8 / 1.08)


def test_schedule_subtracts_the_time_already_spent():
    # 1.5 minutes spent on phantoms and preprocessing: training 13.8 - 1.5 = 12.3 min, CPS 12.3 x 0.8 / 1.08
    s = training_schedule(15, "cpu", 0.2, 0.8, elapsed_minutes=1.5)
    assert s["cps_minutes"] == pytest.approx(9.1111, rel=1e-4)
    # with the predictions too: 13.8 - 1.5 - 3.2 = 9.1 min, CPS 6.7407 min
    both = training_schedule(15, "cpu", 0.2, 0.8, predictions=60, elapsed_minutes=1.5)
    assert both["cps_minutes"] == pytest.approx(6.7407, rel=1e-4)
    # a budget already spent still trains half a minute
    assert training_schedule(15, "cpu", 0.2, 0.8, elapsed_minutes=20)["cps_minutes"] == pytest.approx(0.5 * 0.8 / 1.08)


def test_not_learned_lists_organs_below_the_threshold_in_every_run():
    def summary(**dsc):
        return {"per_target": {o: {"DSC_mean": v} for o, v in dsc.items()}}

    runs = {"Baseline": summary(liver=0.9, pancreas=0.1, adrenal=0.0, spleen=0.19),
            "CPS": summary(liver=0.8, pancreas=0.3, adrenal=0.05, spleen=0.2)}
    assert not_learned(runs) == ["adrenal"]
    assert not_learned(runs, threshold=0.5) == ["pancreas", "adrenal", "spleen"]
