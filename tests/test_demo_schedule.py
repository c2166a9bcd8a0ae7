"""The demo's training schedule: budget -> epochs and the lambda warm-up (hand-computed cases)."""

import pytest

from cps3d.demo import WARM_UP_ITERATIONS, training_schedule
from cps3d.training.schedules import cps_lambda


@pytest.mark.parametrize("minutes, t_cps, iters, epochs, start, ramp", [
    # 15 min: 8.25 min of CPS / (1.15 x 0.40 s) = 1076 iterations -> 21 x 50; warm-up 65 % = 14 epochs (>= 600 it)
    (15, 0.40, 50, 21, 14, 3),
    # slower step: 860 iterations -> 17 x 50; 65 % = 11 epochs = 550 iterations < 600, so 12 epochs (600 iterations)
    (15, 0.50, 50, 17, 12, 3),
    # 1 min: 57 iterations -> 5 x 10; 600 iterations would be all of it: capped so that lambda is 0.5 in epoch 4
    (1, 0.50, 10, 5, 3, 1),
    # the smallest run: 2 epochs, no warm-up left
    (1, 5.0, 10, 2, 0, 1),
])
def test_schedule_sizes_epochs_and_warm_up(minutes, t_cps, iters, epochs, start, ramp):
    s = training_schedule(minutes, "cpu", 0.1, t_cps)
    assert (s["iters_per_epoch"], s["expected_epochs"], s["lambda_start_epoch"], s["lambda_ramp_epochs"]) == \
        (iters, epochs, start, ramp)
    assert s["cps_minutes"] == pytest.approx(0.55 * minutes)
    lam = [cps_lambda(e, 0.5, s["lambda_ramp_epochs"], s["lambda_start_epoch"]) for e in range(epochs)]
    assert all(v == 0 for v in lam[:start]) and lam[-1] == 0.5  # warm-up, then CPS at full weight by the end
    if start * iters < WARM_UP_ITERATIONS:
        assert start + ramp == epochs - 1  # the cap: full weight exactly in the last expected epoch
