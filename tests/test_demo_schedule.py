"""The demo's training schedule (budget -> epochs and the lambda ramp) and its list of organs not learned, against
hand computations."""

import pytest

from cps3d.demo import not_learned, training_schedule
from cps3d.training.schedules import cps_lambda


@pytest.mark.parametrize("minutes, t_sup, t_cps, cps_minutes, iters, epochs", [
    # 15 min: training 0.88 x 15 - 0.6 = 12.6 min; costs 0.8 (CPS) and 1.4 x 0.2 = 0.28 (supervised) -> CPS gets
    # 12.6 x 0.8 / 1.08 = 9.333 min = 560 s / 0.8 s = 699.99 -> 699 iterations -> 34 per epoch, 20 epochs
    (15, 0.2, 0.8, 9.3333, 34, 20),
    # a 3.4x slower machine: the same share, 560 / 2.72 = 205 iterations -> 10 per epoch (the minimum), 20 epochs
    (15, 0.68, 2.72, 9.3333, 10, 20),
    # 1 minute: training max(0.5, 0.28) = 0.5 min, CPS 0.5 x 0.8 / 1.08 = 0.37 min = 22.2 s / 0.8 s = 27 iterations
    # -> 2 epochs of 10
    (1, 0.2, 0.8, 0.37037, 10, 2),
    # a fast step: 12.6 x 0.03 / (0.03 + 0.014) = 8.591 min = 515.5 s / 0.03 s = 17181 iterations -> 50 per epoch
    (15, 0.01, 0.03, 8.5909, 50, 343),
])
def test_schedule_sizes_epochs_and_the_lambda_ramp(minutes, t_sup, t_cps, cps_minutes, iters, epochs):
    s = training_schedule(minutes, "cpu", t_sup, t_cps)
    assert s["cps_minutes"] == pytest.approx(cps_minutes, rel=1e-4)
    assert (s["iters_per_epoch"], s["expected_epochs"]) == (iters, epochs)
    assert s["lambda_start_epoch"] == 0 and s["lambda_ramp_epochs"] == max(1, epochs // 2)
    lam = [cps_lambda(e, 0.5, s["lambda_ramp_epochs"], s["lambda_start_epoch"]) for e in range(epochs)]
    assert lam[0] == 0 and lam[-1] == 0.5  # the paper's ramp from 0, at full weight from half of the run on
    assert s["max_epochs"] == 100 * epochs  # the clock stops training, not the epoch count


def test_schedule_reserves_time_for_predicting_the_test_scans():
    # 60 scans x runs at 12 supervised steps of 0.2 s each = 144 s = 2.4 min more reserve: training 12.6 - 2.4 =
    # 10.2 min, CPS 10.2 x 0.8 / 1.08 = 7.5556 min = 453.3 s / 0.8 s = 566 iterations -> 28 per epoch, 20 epochs
    s = training_schedule(15, "cpu", 0.2, 0.8, predictions=60)
    assert s["cps_minutes"] == pytest.approx(7.5556, rel=1e-4)
    assert (s["iters_per_epoch"], s["expected_epochs"]) == (28, 20)
    # a machine twice as slow predicts twice as long: 4.8 min, training 7.8 min, CPS 5.7778 min
    slow = training_schedule(15, "cpu", 0.4, 1.6, predictions=60)
    assert slow["cps_minutes"] == pytest.approx(5.7778, rel=1e-4)
    # the floor of half a minute of training holds however many scans there are
    assert training_schedule(15, "cpu", 0.2, 0.8, predictions=10 ** 4)["cps_minutes"] == pytest.approx(0.5 * 0.8 / 1.08)


def test_not_learned_lists_organs_below_the_threshold_in_every_run():
    def summary(**dsc):
        return {"per_target": {o: {"DSC_mean": v} for o, v in dsc.items()}}

    runs = {"Baseline": summary(liver=0.9, pancreas=0.1, adrenal=0.0, spleen=0.19),
            "CPS": summary(liver=0.8, pancreas=0.3, adrenal=0.05, spleen=0.2)}
    assert not_learned(runs) == ["adrenal"]
    assert not_learned(runs, threshold=0.5) == ["pancreas", "adrenal", "spleen"]
