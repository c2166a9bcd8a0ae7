"""The CPS objective against a hand computation, gradient isolation between the two networks, and the schedules."""

import numpy as np
import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from cps3d.training.losses import (
    confidence_masks,
    cps_loss_terms,
    cross_terms,
    masked_cross_entropy,
    paper_cross_fn,
    pseudo_label_cross_entropy,
    pseudo_label_stats,
    pseudo_labels,
)
from cps3d.training.schedules import PlateauSchedule, cps_lambda

WEIGHTS = np.array([1.0, 0.5, 0.0])  # nnU-Net's deep-supervision weights (before normalisation): last scale unused
WEIGHTS = WEIGHTS / WEIGHTS.sum()
SMOOTH = 1e-5


def nnunet_loss(batch_dice: bool = False):
    """The loss nnU-Net's trainer builds: Dice (no background) + CE, wrapped for deep supervision."""
    dc_ce = DC_and_CE_loss({"batch_dice": batch_dice, "smooth": SMOOTH, "do_bg": False, "ddp": False}, {},
                           weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    return DeepSupervisionWrapper(dc_ce, WEIGHTS)


def hand_dice_ce(logits: np.ndarray, target: np.ndarray, batch_dice: bool = False) -> float:
    """Dice+CE written out in numpy: softmax, mean voxel cross-entropy, minus mean soft Dice over foreground classes."""
    b, c = logits.shape[:2]
    e = np.exp(logits - logits.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    t = target[:, 0].astype(int)
    onehot = np.stack([(t == k) for k in range(c)], 1).astype(float)
    ce = -np.mean(np.log(np.take_along_axis(p, t[:, None], 1)))
    axes = tuple(range(2, logits.ndim))
    inter = (p * onehot).sum(axes)[:, 1:]
    denom = (p.sum(axes) + onehot.sum(axes))[:, 1:]
    if batch_dice:
        inter, denom = inter.sum(0), denom.sum(0)
    dice = (2 * inter + SMOOTH) / (denom + SMOOTH)
    return ce - dice.mean()


def hand_ds(outputs: list[np.ndarray], targets: list[np.ndarray]) -> float:
    return sum(w * hand_dice_ce(o, t) for w, o, t in zip(WEIGHTS, outputs, targets) if w != 0)


def _random_outputs(rng, batch, classes=3, shapes=((4, 6, 6), (2, 3, 3), (1, 2, 2))):
    return [torch.tensor(rng.normal(size=(batch, classes, *s)) * 2, dtype=torch.float64) for s in shapes]


def test_cps_loss_equals_hand_computation_at_every_scale():
    rng = np.random.default_rng(0)
    o1l, o2l = _random_outputs(rng, 2), _random_outputs(rng, 2)
    o1u, o2u = _random_outputs(rng, 3), _random_outputs(rng, 3)
    y = [torch.tensor(rng.integers(0, 3, size=(2, 1, *o.shape[2:])), dtype=torch.float64) for o in o1l]
    terms = cps_loss_terms(nnunet_loss(), o1l, o2l, y, o1u, o2u)

    n = lambda ts: [t.numpy() for t in ts]  # noqa: E731
    argmax = lambda ts: [t.numpy().argmax(1)[:, None] for t in ts]  # noqa: E731
    expected = {
        "sup_1": hand_ds(n(o1l), n(y)),
        "sup_2": hand_ds(n(o2l), n(y)),
        "cps_labeled_1": hand_ds(n(o1l), argmax(o2l)),   # network 1 learns from network 2's labels
        "cps_labeled_2": hand_ds(n(o2l), argmax(o1l)),
        "cps_unlabeled_1": hand_ds(n(o1u), argmax(o2u)),
        "cps_unlabeled_2": hand_ds(n(o2u), argmax(o1u)),
    }
    for name, value in expected.items():
        assert getattr(terms, name).item() == pytest.approx(value, rel=1e-6), name  # nnU-Net sums Dice terms in float32
    lam = 0.3
    total = expected["sup_1"] + expected["sup_2"] + lam * sum(v for k, v in expected.items() if k.startswith("cps"))
    assert terms.total(lam).item() == pytest.approx(total, rel=1e-6)
    l1, l2 = terms.network_losses(lam)
    assert (l1 + l2).item() == pytest.approx(total, rel=1e-6)
    assert l1.item() == pytest.approx(expected["sup_1"] + lam * (expected["cps_labeled_1"]
                                                                  + expected["cps_unlabeled_1"]), rel=1e-6)


def test_cps_loss_without_unlabeled_batch_has_only_labeled_terms():
    rng = np.random.default_rng(1)
    o1l, o2l = _random_outputs(rng, 2), _random_outputs(rng, 2)
    y = [torch.zeros((2, 1, *o.shape[2:]), dtype=torch.float64) for o in o1l]
    terms = cps_loss_terms(nnunet_loss(), o1l, o2l, y)
    assert terms.cps_unlabeled_1 is None
    assert terms.cps.item() == pytest.approx((terms.cps_labeled_1 + terms.cps_labeled_2).item())


def test_cross_terms_are_the_cps_terms_of_one_batch():
    rng = np.random.default_rng(2)
    o1, o2 = _random_outputs(rng, 2), _random_outputs(rng, 2)
    y = [torch.zeros((2, 1, *o.shape[2:]), dtype=torch.float64) for o in o1]
    terms = cps_loss_terms(nnunet_loss(), o1, o2, y, o1, o2)
    c1, c2 = cross_terms(paper_cross_fn(nnunet_loss()), o1, o2)
    assert c1.item() == terms.cps_labeled_1.item() == terms.cps_unlabeled_1.item()
    assert c2.item() == terms.cps_labeled_2.item()


def test_pseudo_labels_are_argmax_per_scale_without_gradient():
    logits = [torch.randn(2, 4, 5, 5, requires_grad=True), torch.randn(2, 4, 3, 3, requires_grad=True)]
    labels = pseudo_labels(logits)
    assert [tuple(t.shape) for t in labels] == [(2, 1, 5, 5), (2, 1, 3, 3)]
    assert all(not t.requires_grad for t in labels)
    assert torch.equal(labels[1][:, 0], logits[1].argmax(1))


def _tiny_net(seed):
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Conv3d(1, 3, 3, padding=1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net


def test_cps_terms_send_gradient_only_to_the_network_being_supervised():
    net1, net2 = _tiny_net(0), _tiny_net(1)
    x_l, x_u = torch.randn(2, 1, 4, 6, 6), torch.randn(2, 1, 4, 6, 6)
    y = torch.randint(0, 3, (2, 1, 4, 6, 6)).float()
    loss = DC_and_CE_loss({"batch_dice": False, "smooth": SMOOTH, "do_bg": False, "ddp": False}, {},
                          dice_class=MemoryEfficientSoftDiceLoss)
    loss_fn = lambda o, t: loss(o[0], t[0])  # noqa: E731

    def grads(term_name):
        for p in (*net1.parameters(), *net2.parameters()):
            p.grad = None
        terms = cps_loss_terms(loss_fn, net1(x_l), net2(x_l), y, net1(x_u), net2(x_u))
        getattr(terms, term_name).backward()
        norm = lambda net: sum(0.0 if p.grad is None else p.grad.abs().sum().item() for p in net.parameters())  # noqa
        return norm(net1), norm(net2)

    for term in ("cps_labeled_1", "cps_unlabeled_1", "sup_1"):
        g1, g2 = grads(term)
        assert g1 > 0 and g2 == 0, term
    for term in ("cps_labeled_2", "cps_unlabeled_2", "sup_2"):
        g1, g2 = grads(term)
        assert g1 == 0 and g2 > 0, term


@pytest.mark.parametrize("epoch, expected", [(0, 0.0), (50, 0.25), (100, 0.5), (101, 0.5), (999, 0.5)])
def test_lambda_ramps_linearly_then_stays(epoch, expected):
    assert cps_lambda(epoch, lambda_max=0.5, ramp_epochs=100, start_epoch=0) == pytest.approx(expected)


@pytest.mark.parametrize("epoch, expected", [(0, 0.0), (9, 0.0), (10, 0.0), (15, 0.125), (20, 0.25), (30, 0.5),
                                             (40, 0.5)])
def test_lambda_warm_up_holds_zero_then_shifts_the_ramp(epoch, expected):
    assert cps_lambda(epoch, lambda_max=0.5, ramp_epochs=20, start_epoch=10) == pytest.approx(expected)


def test_lambda_edge_cases():
    assert cps_lambda(0, 0.5, ramp_epochs=0, start_epoch=0) == 0.5  # no ramp: constant
    assert cps_lambda(3, 1.0, ramp_epochs=4, start_epoch=0) == pytest.approx(0.75)
    assert cps_lambda(4, 0.5, ramp_epochs=0, start_epoch=5) == 0.0  # no ramp, warm-up: a step at the start epoch
    assert cps_lambda(5, 0.5, ramp_epochs=0, start_epoch=5) == 0.5
    with pytest.raises(ValueError):
        cps_lambda(-1, 0.5, 500, 0)
    with pytest.raises(ValueError):
        cps_lambda(3, 0.5, 500, start_epoch=-1)


def test_poly_schedule_in_trainer_matches_nnunet_formula():
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = PolyLRScheduler(opt, 0.01, 100)
    for epoch in (0, 10, 73):
        sched.step(epoch)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * (1 - epoch / 100) ** 0.9)


def test_plateau_schedule_reduces_after_patience_and_keeps_state():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = PlateauSchedule(opt, factor=0.2, patience=2, threshold=1e-3, ema_alpha=0.0, min_lr=1e-6)
    for loss in (1.0, 0.5, 0.25):  # improving: no change
        sched.step(loss)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    for _ in range(3):  # three epochs without improvement > patience 2
        sched.step(0.25)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.002)
    state = sched.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.002)
    restored = PlateauSchedule(opt2, factor=0.2, patience=2, threshold=1e-3, ema_alpha=0.0, min_lr=1e-6)
    restored.load_state_dict(state)
    assert restored.scheduler.num_bad_epochs == sched.scheduler.num_bad_epochs
    assert restored.loss_ema == sched.loss_ema


def test_plateau_schedule_watches_a_moving_average():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = PlateauSchedule(opt, factor=0.2, patience=30, threshold=1e-3, ema_alpha=0.9, min_lr=1e-6)
    assert sched.step(1.0) == pytest.approx(1.0)
    assert sched.step(0.0) == pytest.approx(0.9)


# ---------------------------------------------------------------------------------------- the "ce" cross terms
def test_masked_cross_entropy_by_hand():
    # 2 classes, 1 x 1 x 2 voxels: logits (0, ln 3) and (ln 3, 0); labels 1 and 1
    logits = torch.tensor([[[[0.0, np.log(3.0)]], [[np.log(3.0), 0.0]]]], dtype=torch.float64)  # (1, 2, 1, 2)
    labels = torch.tensor([[[[1, 1]]]])
    # voxel 0: p(1) = 3/4 -> -ln(3/4); voxel 1: p(1) = 1/4 -> -ln(1/4)
    assert masked_cross_entropy(logits, labels).item() == pytest.approx((np.log(4 / 3) + np.log(4)) / 2)
    # a masked voxel counts as 0 in the mean over all voxels
    mask = torch.tensor([[[[1.0, 0.0]]]], dtype=torch.float64)
    assert masked_cross_entropy(logits, labels, mask).item() == pytest.approx(np.log(4 / 3) / 2)


def test_confidence_masks_keep_voxels_at_or_above_the_threshold():
    # top probabilities: 0.75 (logits 0, ln 3), 0.5 (equal logits), 0.9 (0, ln 9)
    logits = torch.tensor([[[[0.0, 0.0, 0.0]], [[np.log(3.0), 0.0, np.log(9.0)]]]])
    assert confidence_masks(logits, 0.75)[0].flatten().tolist() == [1.0, 0.0, 1.0]
    assert confidence_masks(logits, 0.8)[0].flatten().tolist() == [0.0, 0.0, 1.0]


def test_pseudo_label_cross_entropy_weights_scales_and_masks_unsure_teacher_voxels():
    rng = np.random.default_rng(3)
    student = _random_outputs(rng, 2)
    teacher = _random_outputs(rng, 2)

    def hand(threshold):
        total = 0.0
        for w, s, t in zip(WEIGHTS, student, teacher):
            if w == 0:
                continue
            s, t = s.numpy(), t.numpy()
            ps = np.exp(s - s.max(1, keepdims=True))
            ps /= ps.sum(1, keepdims=True)
            pt = np.exp(t - t.max(1, keepdims=True))
            pt /= pt.sum(1, keepdims=True)
            y = t.argmax(1)
            ce = -np.log(np.take_along_axis(ps, y[:, None], 1))[:, 0]
            keep = pt.max(1) >= threshold
            total += w * np.mean(ce * keep)
        return total

    for threshold in (0.0, 0.7, 0.95):
        got = pseudo_label_cross_entropy(student, teacher, WEIGHTS, threshold).item()
        assert got == pytest.approx(hand(threshold), rel=1e-9), threshold
    assert pseudo_label_cross_entropy(student, teacher, WEIGHTS, 0.95).item() < \
        pseudo_label_cross_entropy(student, teacher, WEIGHTS, 0.0).item()
    with pytest.raises(ValueError, match="weight"):
        pseudo_label_cross_entropy(student, teacher, WEIGHTS[:2], 0.0)


def test_pseudo_label_cross_entropy_sends_no_gradient_to_the_teacher():
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, requires_grad=True)
    pseudo_label_cross_entropy([s], [t], [1.0], 0.5).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_cps_terms_use_the_given_cross_loss():
    rng = np.random.default_rng(4)
    o1, o2 = _random_outputs(rng, 2), _random_outputs(rng, 2)
    y = [torch.zeros((2, 1, *o.shape[2:]), dtype=torch.float64) for o in o1]
    ce = lambda s, t: pseudo_label_cross_entropy(s, t, WEIGHTS, 0.0)  # noqa: E731
    terms = cps_loss_terms(nnunet_loss(), o1, o2, y, o1, o2, cross_fn=ce)
    assert terms.cps_labeled_1.item() == pytest.approx(ce(o1, o2).item())
    assert terms.cps_unlabeled_2.item() == pytest.approx(ce(o2, o1).item())
    assert terms.sup_1.item() == pytest.approx(hand_ds([t.numpy() for t in o1], [t.numpy() for t in y]), rel=1e-6)


def test_pseudo_label_stats_by_hand():
    # 4 voxels, 2 classes: argmax foreground at voxels 1 and 2; top probabilities 0.5, 0.75, 0.9, 0.9
    logits = torch.tensor([[[[0.0, 0.0, 0.0, np.log(9.0)]], [[0.0, np.log(3.0), np.log(9.0), 0.0]]]])
    fg, kept = pseudo_label_stats([logits], 0.8)
    assert fg == pytest.approx(0.5)
    assert kept == pytest.approx(0.5)
    assert pseudo_label_stats(logits, 0.0)[1] == 1.0


def test_train_config_checks_the_cross_loss_options():
    from cps3d.training.config import TrainConfig

    assert TrainConfig(cps_loss="ce", confidence=0.9).confidence == 0.9
    with pytest.raises(ValueError, match="cps_loss"):
        TrainConfig(cps_loss="dice")
    with pytest.raises(ValueError, match="confidence"):
        TrainConfig(cps_loss="ce", confidence=1.0)
    with pytest.raises(ValueError, match="needs cps_loss='ce'"):
        TrainConfig(cps_loss="dice_ce", confidence=0.5)
    with pytest.raises(ValueError, match="plateau_on"):
        TrainConfig(plateau_on="val")
