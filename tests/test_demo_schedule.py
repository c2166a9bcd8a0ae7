"""The demo's training schedule (budget -> epochs and the lambda ramp) and its list of organs not learned, against
hand computations."""

import pytest

from cps3d.demo import not_learned, training_schedule
from cps3d.training.schedules import cps_lambda


@pytest.mark.parametrize("minutes, t_sup, t_cps, cps_minutes, iters, epochs", [
    # 15 min: training 0.88 x 15 - 0.6 = 12.6 min; CPS share 0.8 / (0.8 + 0.2) -> 10.08 min;
    # 604.8 s / (1.25 x 0.8 s) = 604 iterations -> 30 per epoch, 20 epochs
    (15, 0.2, 0.8, 10.08, 30, 20),
    # a 3.4x slower machine: 604.8 / (1.25 x 2.72) = 177 iterations -> 10 per epoch (the minimum), 17 epochs
    (15, 0.68, 2.72, 10.08, 10, 17),
    # 1 minute: training max(0.5, 0.28) = 0.5 min, CPS 0.4 min = 24 s / (1.25 x 0.8) = 24 iterations -> 2 x 10
    (1, 0.2, 0.8, 0.4, 10, 2),
    # a fast step: 12.6 x 0.75 = 9.45 min = 567 s / (1.25 x 0.03) = 15120 iterations -> 50 per epoch (the maximum)
    (15, 0.01, 0.03, 9.45, 50, 302),
])
def test_schedule_sizes_epochs_and_the_lambda_ramp(minutes, t_sup, t_cps, cps_minutes, iters, epochs):
    s = training_schedule(minutes, "cpu", t_sup, t_cps)
    assert s["cps_minutes"] == pytest.approx(cps_minutes)
    assert (s["iters_per_epoch"], s["expected_epochs"]) == (iters, epochs)
    assert s["lambda_start_epoch"] == 0 and s["lambda_ramp_epochs"] == max(1, epochs // 2)
    lam = [cps_lambda(e, 0.5, s["lambda_ramp_epochs"], s["lambda_start_epoch"]) for e in range(epochs)]
    assert lam[0] == 0 and lam[-1] == 0.5  # the paper's ramp from 0, at full weight from half of the run on
    assert s["max_epochs"] == 100 * epochs  # the clock stops training, not the epoch count


def test_not_learned_lists_organs_below_the_threshold_in_every_run():
    def summary(**dsc):
        return {"per_target": {o: {"DSC_mean": v} for o, v in dsc.items()}}

    runs = {"Baseline": summary(liver=0.9, pancreas=0.1, adrenal=0.0, spleen=0.19),
            "CPS": summary(liver=0.8, pancreas=0.3, adrenal=0.05, spleen=0.2)}
    assert not_learned(runs) == ["adrenal"]
    assert not_learned(runs, threshold=0.5) == ["pancreas", "adrenal", "spleen"]
