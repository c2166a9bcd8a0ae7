"""The demo's training schedule (budget -> epochs and the lambda ramp) and its list of organs not learned, against
hand computations."""

import pytest

from cps3d.demo import not_learned, training_schedule
from cps3d.training.schedules import cps_lambda


@pytest.mark.parametrize("minutes, t_sup, t_cps, cps_minutes, iters, epochs", [
    # 15 min: training 0.95 x 15 = 14.25 min; costs 0.8 (CPS) and 1.4 x 0.2 = 0.28 (supervised) -> CPS gets
    # 14.25 x 0.8 / 1.08 = 10.5556 min = 633.3 s / 0.8 s = 791.7 -> 791 iterations -> 39 per epoch, 20 epochs
    (15, 0.2, 0.8, 10.5556, 39, 20),
    # a 3.4x slower machine: the same share, 633.3 / 2.72 = 232.8 -> 232 iterations -> 11 per epoch, 21 epochs
    (15, 0.68, 2.72, 10.5556, 11, 21),
    # 1 minute: training 0.95 min, CPS 0.95 x 0.8 / 1.08 = 0.7037 min = 42.2 s / 0.8 s = 52 iterations -> 10 per
    # epoch (the minimum), 5 epochs
    (1, 0.2, 0.8, 0.70370, 10, 5),
    # a fast step: 14.25 x 0.03 / (0.03 + 0.014) = 9.7159 min = 582.95 s / 0.03 s = 19431 iterations -> 50 per epoch
    (15, 0.01, 0.03, 9.7159, 50, 388),
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
    # 60 scans x runs at 12 + 2 supervised steps of 0.2 s each = 168 s = 2.8 min: training 14.25 - 2.8 = 11.45 min,
    # CPS 11.45 x 0.8 / 1.08 = 8.4815 min = 508.9 s / 0.8 s = 636 iterations -> 31 per epoch, 20 epochs
    s = training_schedule(15, "cpu", 0.2, 0.8, predictions=60)
    assert s["cps_minutes"] == pytest.approx(8.4815, rel=1e-4)
    assert (s["iters_per_epoch"], s["expected_epochs"]) == (31, 20)
    # a machine twice as slow predicts twice as long: 5.6 min, training 8.65 min, CPS 8.65 x 1.6 / 2.16 = 6.4074 min
    slow = training_schedule(15, "cpu", 0.4, 1.6, predictions=60)
    assert slow["cps_minutes"] == pytest.approx(6.4074, rel=1e-4)
    # the floor of half a minute of training holds however many scans there are
    assert training_schedule(15, "cpu", 0.2, 0.8, predictions=10 ** 4)["cps_minutes"] == pytest.approx(0.5 * 0.8 / 1.08)


def test_schedule_subtracts_the_time_already_spent():
    # 1.5 minutes spent on phantoms and preprocessing: training 14.25 - 1.5 = 12.75 min, CPS 12.75 x 0.8 / 1.08
    s = training_schedule(15, "cpu", 0.2, 0.8, elapsed_minutes=1.5)
    assert s["cps_minutes"] == pytest.approx(9.4444, rel=1e-4)
    # with the predictions too: 14.25 - 1.5 - 2.8 = 9.95 min, CPS 7.3704 min
    both = training_schedule(15, "cpu", 0.2, 0.8, predictions=60, elapsed_minutes=1.5)
    assert both["cps_minutes"] == pytest.approx(7.3704, rel=1e-4)
    # a budget already spent still trains half a minute
    assert training_schedule(15, "cpu", 0.2, 0.8, elapsed_minutes=20)["cps_minutes"] == pytest.approx(0.5 * 0.8 / 1.08)


def test_not_learned_lists_organs_below_the_threshold_in_every_run():
    def summary(**dsc):
        return {"per_target": {o: {"DSC_mean": v} for o, v in dsc.items()}}

    runs = {"Baseline": summary(liver=0.9, pancreas=0.1, adrenal=0.0, spleen=0.19),
            "CPS": summary(liver=0.8, pancreas=0.3, adrenal=0.05, spleen=0.2)}
    assert not_learned(runs) == ["adrenal"]
    assert not_learned(runs, threshold=0.5) == ["pancreas", "adrenal", "spleen"]
