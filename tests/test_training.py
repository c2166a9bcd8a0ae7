"""The trainer: checkpoints hold and restore both networks and optimizers; resuming continues at the right epoch;
a crash while saving keeps the previous checkpoint; the configuration is validated and saved with the run."""

import json
import os
import shutil

import pytest
import torch

from cps3d.files import read_json
from cps3d.training.base import unwrap
from cps3d.training.config import TrainConfig
from cps3d.training.run import resume_checkpoint, train

QUICK = dict(iters_per_epoch=2, val_iters=1, final_validation=False)


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def optimizer_buffers(opt) -> list[torch.Tensor]:
    return [s["momentum_buffer"].clone() for s in opt.state_dict()["state"].values()]


def make_trainer(project, results, config):
    from cps3d.training.run import build_trainer

    return build_trainer(project.dataset_name, project.preprocessed_root, results, "3d_fullres", 0, config,
                         device="cpu", show_progress=False)


def test_checkpoint_round_trip_restores_both_networks_and_optimizers(tiny_project, tmp_path):
    fold = tiny_project.model_dir / "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    trainer = make_trainer(tiny_project, tmp_path, TrainConfig(epochs=3, **QUICK))
    trainer.load_checkpoint(str(fold / "checkpoint_final.pth"))
    nets = [unwrap(n) for n in trainer.networks]
    assert state_equal(nets[0].state_dict(), ckpt["network_weights"])
    assert state_equal(nets[1].state_dict(), ckpt["network_weights_2"])
    assert not state_equal(nets[0].state_dict(), nets[1].state_dict())
    for opt, key in zip(trainer.optimizers, ("optimizer_state", "optimizer_state_2")):
        saved = [s["momentum_buffer"] for s in ckpt[key]["state"].values()]
        assert len(saved) > 0 and all(torch.equal(a, b) for a, b in zip(optimizer_buffers(opt), saved))
    assert trainer.current_epoch == 1  # one epoch was trained: the next one is epoch 1
    assert trainer.logger.get_value("train_losses", None) == ckpt["logging"]["train_losses"]
    assert [s.state_dict() for s in trainer.schedulers] == ckpt["lr_scheduler_states"]


def test_supervised_trainer_refuses_a_cps_checkpoint(tiny_project, tmp_path):
    trainer = make_trainer(tiny_project, tmp_path, TrainConfig(mode="supervised", epochs=3, **QUICK))
    with pytest.raises(ValueError, match="cannot resume 'supervised' training from 'cps'"):
        trainer.load_checkpoint(str(tiny_project.model_dir / "fold_0" / "checkpoint_final.pth"))


def test_resume_continues_at_the_next_epoch_with_everything_restored(tiny_project, tmp_path):
    config = TrainConfig(epochs=2, lambda_ramp_epochs=4, save_every=1, **QUICK)
    first = train(tiny_project.dataset_name, tiny_project.preprocessed_root, tmp_path, "3d_fullres", 0, config,
                  device="cpu", show_progress=False)
    fold = first.output_folder
    before = torch.load(f"{fold}/checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert before["current_epoch"] == 2 and len(before["logging"]["train_losses"]) == 2

    with pytest.raises(FileExistsError, match="--continue"):
        train(tiny_project.dataset_name, tiny_project.preprocessed_root, tmp_path, "3d_fullres", 0, config,
              device="cpu", show_progress=False)

    # kill-like resume from the last checkpoint: the resumed trainer starts from the saved state
    resumed = make_trainer(tiny_project, tmp_path, TrainConfig(epochs=3, lambda_ramp_epochs=4, **QUICK))
    resumed.load_checkpoint(f"{fold}/checkpoint_final.pth")
    assert resumed.current_epoch == 2
    assert state_equal(unwrap(resumed.networks[1]).state_dict(), before["network_weights_2"])

    more = TrainConfig(epochs=3, lambda_ramp_epochs=4, save_every=1, **QUICK)
    after_run = train(tiny_project.dataset_name, tiny_project.preprocessed_root, tmp_path, "3d_fullres", 0, more,
                      device="cpu", continue_training=True, show_progress=False)
    after = torch.load(f"{after_run.output_folder}/checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert after["current_epoch"] == 3
    log = after["logging"]
    assert log["train_losses"][:2] == before["logging"]["train_losses"]  # history kept, one epoch appended
    assert len(log["train_losses"]) == len(log["lambda"]) == len(log["mean_fg_dice_avg"]) == 3
    assert log["lambda"] == pytest.approx([0.0, 0.125, 0.25])  # ramp 0 -> 0.5 over 4 epochs, epoch 2 = 0.25
    assert not state_equal(after["network_weights_2"], before["network_weights_2"])  # it trained on
    config_json = json.loads((tmp_path / tiny_project.dataset_name / "CPSTrainer__cps3dPlans__3d_fullres" / "fold_0"
                              / "cps3d_config.json").read_text())
    assert config_json["train_config"]["epochs"] == 3 and config_json["train_config"]["lambda_max"] == 0.5
    assert config_json["unlabeled_batch_size_per_process"] == 2


def test_time_limit_stops_after_the_epoch_and_writes_the_final_checkpoint(tiny_project, tmp_path):
    config = TrainConfig(epochs=5, max_minutes=1e-4, **QUICK)  # 6 ms: up as soon as the first epoch ends
    trainer = train(tiny_project.dataset_name, tiny_project.preprocessed_root, tmp_path, "3d_fullres", 0, config,
                    device="cpu", show_progress=False)
    ckpt = torch.load(f"{trainer.output_folder}/checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 1 and len(ckpt["logging"]["train_losses"]) == 1
    log = next(__import__("pathlib").Path(trainer.output_folder).glob("training_log_*.txt")).read_text()
    assert "Time limit of 0.0001 minutes reached: stopping after 1 epoch(s) instead of 5" in log
    with pytest.raises(ValueError, match="max_minutes=0"):
        TrainConfig(max_minutes=0)


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tiny_project, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_project, tmp_path, TrainConfig(epochs=2, **QUICK))
    path = tmp_path / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(path))
    good = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint(str(path))
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left behind


def test_networks_have_different_but_reproducible_initialisation(tiny_project, tmp_path):
    a = make_trainer(tiny_project, tmp_path / "a", TrainConfig(epochs=1, **QUICK))
    b = make_trainer(tiny_project, tmp_path / "b", TrainConfig(epochs=1, **QUICK))
    sa = [unwrap(n).state_dict() for n in a.networks]
    sb = [unwrap(n).state_dict() for n in b.networks]
    assert state_equal(sa[0], sb[0]) and state_equal(sa[1], sb[1])
    assert not state_equal(sa[0], sa[1])
    assert a.optimizers[0] is not a.optimizers[1]
    assert {id(p) for p in a.optimizers[0].param_groups[0]["params"]}.isdisjoint(
        id(p) for p in a.optimizers[1].param_groups[0]["params"])


def test_one_cps_step_updates_both_networks_and_reports_every_loss(tiny_project, tmp_path):
    trainer = make_trainer(tiny_project, tmp_path, TrainConfig(epochs=1, **QUICK))
    trainer.current_lambda = 0.5
    before = [{k: v.clone() for k, v in unwrap(n).state_dict().items()} for n in trainer.networks]
    x_l = torch.randn(2, 1, 16, 32, 32)
    from cps3d.training.trainer import _UnlabeledDataLoader  # noqa: F401  (the unlabeled stream's class exists)

    target = trainer.random_batch()["target"]
    x_u = torch.randn(2, 1, 16, 32, 32)

    class _Stream:
        def __next__(self):
            return {"data": x_u}

    trainer.dataloader_unlabeled = _Stream()
    out = trainer.train_step({"data": x_l, "target": target})
    assert set(out) == {"loss", "sup", "cps", "loss_1", "loss_2", "sup_1", "sup_2", "pseudo_fg", "pseudo_kept"}
    assert out["loss"] == pytest.approx(out["sup"] + 0.5 * out["cps"], rel=1e-5)
    assert out["loss"] == pytest.approx(out["loss_1"] + out["loss_2"], rel=1e-5)
    assert out["sup"] == pytest.approx(out["sup_1"] + out["sup_2"], rel=1e-5)
    assert 0 <= out["pseudo_fg"] <= 1 and out["pseudo_kept"] == 1  # no confidence mask by default
    for net, old in zip(trainer.networks, before):
        assert not state_equal(unwrap(net).state_dict(), old)


def test_two_pass_gradients_equal_the_one_pass_objective(tiny_project, tmp_path):
    """forward_backward runs the labeled and the unlabeled batch in separate passes; the gradients must be those of
    the whole objective L_sup + lambda * L_cps computed in one pass (the reference formulation, DESIGN section 4)."""
    from cps3d.training.losses import cps_loss_terms

    trainer = make_trainer(tiny_project, tmp_path, TrainConfig(epochs=1, **QUICK))
    trainer.current_lambda = 0.3
    g = torch.Generator().manual_seed(0)
    x_l, x_u = torch.randn(2, 1, 16, 32, 32, generator=g), torch.randn(2, 1, 16, 32, 32, generator=g)
    target = trainer.random_batch(generator=g)["target"]
    nets = [unwrap(n) for n in trainer.networks]

    def grads():
        out = [{n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None} for net in nets]
        for net in nets:
            net.zero_grad(set_to_none=True)
        return out

    losses = trainer.forward_backward(x_l, target, x_u)
    two_pass = grads()
    outs_l = [net(x_l) for net in nets]
    outs_u = [net(x_u) for net in nets]
    terms = cps_loss_terms(trainer._loss_on_lists, outs_l[0], outs_l[1], target, outs_u[0], outs_u[1])
    total = terms.total(0.3)
    total.backward()
    one_pass = grads()
    assert losses["loss"].item() == pytest.approx(total.item(), rel=1e-5)
    assert losses["cps"].item() == pytest.approx(terms.cps.item(), rel=1e-5)
    for a, b in zip(two_pass, one_pass):
        assert a.keys() == b.keys() and len(a) > 0
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-7, msg=name)


def test_lambda_zero_skips_unlabeled_gradients_but_logs_the_terms(tiny_project, tmp_path):
    trainer = make_trainer(tiny_project, tmp_path, TrainConfig(epochs=1, **QUICK))
    trainer.current_lambda = 0.0
    x = torch.randn(2, 1, 16, 32, 32)
    target = [torch.zeros_like(t) for t in trainer.random_batch()["target"]]
    losses = trainer.forward_backward(x, target, torch.randn(2, 1, 16, 32, 32))
    assert losses["cps"].item() > 0 and losses["loss"].item() == pytest.approx(losses["sup"].item())


def test_the_trainers_share_a_base_and_the_baseline_is_not_a_cps_trainer(tiny_project, tmp_path):
    from cps3d.training.base import MultiNetworkTrainer
    from cps3d.training.trainer import CPSTrainer, SupervisedTrainer

    assert not issubclass(SupervisedTrainer, CPSTrainer)
    assert issubclass(SupervisedTrainer, MultiNetworkTrainer) and issubclass(CPSTrainer, MultiNetworkTrainer)
    trainer = make_trainer(tiny_project, tmp_path, TrainConfig(mode="supervised", epochs=1, **QUICK))
    assert type(trainer) is SupervisedTrainer and len(trainer.networks) == 1 and trainer.was_initialized
    assert trainer.output_folder.endswith(f"{tiny_project.dataset_name}/SupervisedTrainer__cps3dPlans__3d_fullres/fold_0")
    ckpt = trainer.checkpoint_dict()
    assert "network_weights_2" not in ckpt and ckpt["cps3d"]["n_networks"] == 1


def test_random_batch_has_the_shapes_of_nnunets_batches(tiny_project, tmp_path):
    """The synthetic batch (timing, tests) must look like what nnU-Net's loader yields, at every scale."""
    trainer = make_trainer(tiny_project, tmp_path, TrainConfig(epochs=1, **QUICK))
    from cps3d.nnunet_env import nnunet_folders

    with nnunet_folders(preprocessed=tiny_project.preprocessed_root, results=tmp_path):
        loader, _ = trainer.get_dataloaders()
    real = next(loader)
    fake = trainer.random_batch()
    assert fake["data"].shape == real["data"].shape
    assert [t.shape for t in fake["target"]] == [t.shape for t in real["target"]]
    assert {int(v) for t in fake["target"] for v in t.unique()} <= set(range(3))
    assert trainer.random_batch(5)["data"].shape[0] == 5
    x_u = trainer.repeat_unlabeled()
    assert x_u.shape[0] == trainer.unlabeled_batch_size and trainer.current_lambda == 0.5
    assert next(trainer.dataloader_unlabeled)["data"] is x_u


def test_train_config_validation():
    with pytest.raises(ValueError, match="mode='semi'"):
        TrainConfig(mode="semi")
    with pytest.raises(ValueError, match="lr_schedule='cosine'"):
        TrainConfig(lr_schedule="cosine")
    with pytest.raises(ValueError, match="epochs=0"):
        TrainConfig(epochs=0)
    assert TrainConfig(epochs=10).ramp_epochs == 5
    assert TrainConfig.from_dict(TrainConfig(epochs=7).to_dict()) == TrainConfig(epochs=7)
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"epochz": 3})


def test_fold_must_exist_in_the_split(tmp_path, capsys):
    from cps3d.cli import main
    from cps3d.training.run import check_fold

    pre = tmp_path / "pre"
    (pre / "Dataset901_Toy").mkdir(parents=True)
    base = ["train", "-d", "901", "--preprocessed-root", str(pre), "--results-root", str(tmp_path / "res"),
            "--device", "cpu"]
    assert main(base + ["-f", "7"]) == 2  # nnU-Net would train it on a random 80:20 split
    assert "fold 7: choose 0-4 (nnU-Net's 5-fold split) or 'all'" in capsys.readouterr().err
    assert main(base + ["-f", "-1"]) == 2
    assert "--fold '-1': give a number" in capsys.readouterr().err
    assert [check_fold(f, pre, "Dataset901_Toy") for f in ("0", "4", 3, "all")] == [0, 4, 3, "all"]
    splits = pre / "Dataset901_Toy" / "splits_final.json"
    splits.write_text(json.dumps([{"train": ["a"], "val": ["b"]}] * 8))  # a split of its own with more folds
    assert check_fold("7", pre, "Dataset901_Toy") == 7
    with pytest.raises(ValueError, match=r"fold 8: choose 0-7 \(the 8 fold\(s\) of .*splits_final.json\)"):
        check_fold(8, pre, "Dataset901_Toy")
    splits.write_text(json.dumps([{"train": ["a"], "val": ["b"]}] * 3))
    assert main(base + ["-f", "3"]) == 2
    assert "fold 3: choose 0-2 (the 3 fold(s) of" in capsys.readouterr().err
    splits.write_text("{}")
    with pytest.raises(ValueError, match="splits_final.json: expected a non-empty list of folds"):
        check_fold(0, pre, "Dataset901_Toy")


def test_lambda_warm_up_reaches_the_trainer(tiny_project, tmp_path):
    config = TrainConfig(epochs=8, lambda_ramp_epochs=2, lambda_start_epoch=3, **QUICK)
    trainer = make_trainer(tiny_project, tmp_path, config)
    trainer.load_checkpoint(str(tiny_project.model_dir / "fold_0" / "checkpoint_final.pth"))
    seen = []
    for epoch in range(6):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        seen.append(trainer.current_lambda)
    assert seen == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.25, 0.5])
    with pytest.raises(ValueError, match="lambda_start_epoch"):
        TrainConfig(lambda_start_epoch=-1)


def test_resume_takes_the_checkpoint_with_the_later_epoch(tiny_project, tmp_path):
    """A finished run extended with --continue and killed midway holds an old checkpoint_final and a later
    checkpoint_latest: resuming must go on from the latest (nnU-Net's final-first order would lose the extension).
    Issue 12.10: the stored epoch decides, not the modification time, which a copy of the folder need not keep."""
    model_dir = tmp_path / tiny_project.dataset_name / tiny_project.model_dir.name
    shutil.copytree(tiny_project.model_dir, model_dir)
    fold = model_dir / "fold_0"
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 1
    extended = dict(final, current_epoch=2)  # the state after one more epoch of the extension
    torch.save(extended, fold / "checkpoint_latest.pth")
    new = (fold / "checkpoint_latest.pth").stat().st_mtime_ns
    os.utime(fold / "checkpoint_latest.pth", ns=(new - 10**9, new - 10**9))  # a copy that made final look newer
    os.utime(fold / "checkpoint_final.pth", ns=(new, new))
    assert resume_checkpoint(fold) == fold / "checkpoint_latest.pth"

    trainer = train(tiny_project.dataset_name, tiny_project.preprocessed_root, tmp_path, "3d_fullres", 0,
                    TrainConfig(epochs=2, **QUICK), device="cpu", continue_training=True, show_progress=False)
    assert trainer.current_epoch == 2  # resumed at epoch 2 = finished: nothing retrained
    assert torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["current_epoch"] == 1

    torch.save(final, fold / "checkpoint_latest.pth")  # the same epoch, latest newer: final wins the tie
    assert resume_checkpoint(fold) == fold / "checkpoint_final.pth"
    (fold / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint_final.pth: cannot read the checkpoint"):
        resume_checkpoint(fold)
    for name in ("checkpoint_final.pth", "checkpoint_latest.pth"):
        (fold / name).unlink()
    assert resume_checkpoint(fold) == (fold / "checkpoint_best.pth" if (fold / "checkpoint_best.pth").is_file()
                                       else None)

def test_continue_takes_the_saved_schedule_and_refuses_a_different_one(tiny_project, tmp_path, capsys):
    """Issue 12.7/12.8: --continue without --lr-schedule goes on with the run's poly schedule (it used to load the
    poly state into a plateau schedule: KeyError 'loss_ema'); a different schedule or lr is refused by name."""
    from cps3d.cli import main

    base = ["train", "-d", tiny_project.dataset_name, "--preprocessed-root", str(tiny_project.preprocessed_root),
            "--results-root", str(tmp_path), "--device", "cpu", "--no-progress"]
    assert main([*base, "--epochs", "2", "--lr-schedule", "poly", "--iters-per-epoch", "1", "--val-iters", "1",
                 "--no-final-validation"]) == 0
    assert main([*base, "--epochs", "3", "--continue"]) == 0
    fold = tmp_path / tiny_project.dataset_name / "CPSTrainer__cps3dPlans__3d_fullres" / "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    saved = ckpt["cps3d"]["train_config"]
    assert ckpt["current_epoch"] == 3 and saved["lr_schedule"] == "poly" and saved["iters_per_epoch"] == 1
    assert saved["final_validation"] is False  # taken from the run, not TrainConfig's default
    lrs = ckpt["logging"]["lrs"]
    assert lrs[:2] == pytest.approx([0.01, 0.01 * 0.5 ** 0.9])
    # the extension goes on from the current lr down to 0 at epoch 3 (not at the old end, epoch 2)
    assert lrs[2] == pytest.approx(lrs[1] * (1 / 2) ** 0.9) and 0 < lrs[2] < lrs[1]
    capsys.readouterr()
    for option, value, saved_value in (("--lr-schedule", "plateau", "'poly'"), ("--initial-lr", "0.1", "0.01"),
                                       ("--seed", "1", "12345")):
        assert main([*base, "--epochs", "4", "--continue", option, value]) == 2
        err = capsys.readouterr().err
        name = option[2:].replace("-", "_")
        assert f"cannot change {name} (the run was trained with {saved_value}, given" in err
    assert torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["current_epoch"] == 3


def test_resume_refuses_a_changed_option_and_logs_the_allowed_ones(tiny_project, tmp_path, caplog):
    """Issue 12.8 in the API: a full TrainConfig that differs from the run's in a non-resumable option is refused
    (plateau after poly used to switch schedules silently); epochs and the like are applied and logged."""
    import logging

    from cps3d.training.config import RESUMABLE, merge_for_resume

    args = (tiny_project.dataset_name, tiny_project.preprocessed_root, tmp_path, "3d_fullres", 0)
    train(*args, TrainConfig(epochs=1, lr_schedule="plateau", **QUICK), device="cpu", show_progress=False)
    with pytest.raises(ValueError, match=r"lr_schedule \(the run was trained with 'plateau', given 'poly'\)"):
        train(*args, TrainConfig(epochs=2, lr_schedule="poly", **QUICK), device="cpu", continue_training=True,
              show_progress=False)
    with pytest.raises(ValueError, match=r"momentum \(the run was trained with 0.99, given 0.9\)"):
        train(*args, TrainConfig(epochs=2, momentum=0.9, **QUICK), device="cpu", continue_training=True,
              show_progress=False)
    with caplog.at_level(logging.INFO, logger="cps3d.training.run"):
        t = train(*args, TrainConfig(epochs=2, save_every=2, **QUICK), device="cpu", continue_training=True,
                  show_progress=False)
    assert t.current_epoch == 2 and t.train_config.save_every == 2
    assert "epochs: 1 -> 2" in caplog.text and "save_every: 1 -> 2" in caplog.text
    assert "lambda keeps its ramp over 0 epochs" in caplog.text and t.train_config.lambda_ramp_epochs == 0
    assert RESUMABLE == {"epochs", "max_minutes", "save_every", "final_validation", "val_iters"}
    merged, _ = merge_for_resume(TrainConfig(epochs=4), {"max_minutes": 5.0, "lambda_ramp_epochs": None})
    assert merged == TrainConfig(epochs=4, max_minutes=5.0)


def test_poly_extension_goes_on_from_the_current_learning_rate():
    from cps3d.training.schedules import extended_poly_initial_lr

    def poly_lr(epoch, initial_lr, max_epochs):  # nnU-Net's PolyLRScheduler, exponent 0.9
        return initial_lr * (1 - epoch / max_epochs) ** 0.9

    assert extended_poly_initial_lr(0.01, 10, 10, 4) == 0.01  # a resumed kill: the same curve
    new = extended_poly_initial_lr(0.01, 2, 3, 2)  # 2 epochs done of 2, extended to 3
    assert poly_lr(1, new, 3) == pytest.approx(poly_lr(1, 0.01, 2))  # through the last trained epoch's lr
    assert poly_lr(2, new, 3) > 0
    with pytest.raises(ValueError, match="next_epoch=5"):
        extended_poly_initial_lr(0.01, 4, 8, 5)


def test_continue_finishes_a_final_validation_that_was_killed(tiny_project, tmp_path):
    """Issue 12.9: a kill during nnU-Net's final validation leaves checkpoint_final.pth without
    validation/summary.json; --continue used to say "nothing to do" forever."""
    args = (tiny_project.dataset_name, tiny_project.preprocessed_root, tmp_path, "3d_fullres", 0)
    config = TrainConfig(epochs=1, iters_per_epoch=1, val_iters=1, final_validation=True)
    first = train(*args, config, device="cpu", show_progress=False)
    validation = __import__("pathlib").Path(first.output_folder) / "validation"
    assert (validation / "summary.json").is_file()
    shutil.rmtree(validation)  # as if killed while predicting the validation cases
    again = train(*args, config, device="cpu", continue_training=True, show_progress=False)
    assert again.current_epoch == 1  # nothing retrained
    assert "foreground_mean" in read_json(validation / "summary.json")


def test_cutmix_cross_terms_are_those_of_the_mixed_batch_against_mixed_teachers(tiny_project, tmp_path):
    """With ``cutmix``, the unlabeled terms are l(T1(mix(x_u)), mix(argmax T2(x_u))) and the same with 1 and 2
    swapped: the gradients must equal that reference built from the same box masks."""
    from cps3d.training.losses import cps_loss_terms
    from cps3d.training.mixing import box_masks, mix, mix_outputs

    trainer = make_trainer(tiny_project, tmp_path, TrainConfig(epochs=1, cutmix=True, **QUICK))
    trainer.current_lambda = 0.4
    g = torch.Generator().manual_seed(0)
    x_l, x_u = torch.randn(3, 1, 16, 32, 32, generator=g), torch.randn(3, 1, 16, 32, 32, generator=g)
    target = trainer.random_batch(batch_size=3, generator=g)["target"]
    nets = [unwrap(n) for n in trainer.networks]
    trainer._mix_gen = torch.Generator().manual_seed(5)
    losses = trainer.forward_backward(x_l, target, x_u)
    mixed = [{n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None} for net in nets]
    for net in nets:
        net.zero_grad(set_to_none=True)

    mask = box_masks(3, (16, 32, 32), torch.Generator().manual_seed(5))
    assert 0 < mask.mean() < 1
    cross = trainer._cross_fn()
    outs_l = [net(x_l) for net in nets]
    with torch.no_grad():
        teachers = [mix_outputs(net(x_u), mask) for net in nets]
    students = [net(mix(x_u, mask)) for net in nets]
    terms = cps_loss_terms(trainer._loss_on_lists, outs_l[0], outs_l[1], target, cross_fn=cross)
    unlabeled = cross(students[0], teachers[1]) + cross(students[1], teachers[0])
    (terms.total(0.4) + 0.4 * unlabeled).backward()
    assert losses["loss"].item() == pytest.approx((terms.total(0.4) + 0.4 * unlabeled).item(), rel=1e-5)
    for a, net in zip(mixed, nets):
        ref = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
        assert a.keys() == ref.keys() and len(a) > 0
        for name in a:
            torch.testing.assert_close(a[name], ref[name], rtol=1e-4, atol=1e-7, msg=name)
    # the unmixed batch gives other gradients: the option is not a no-op
    for net in nets:
        net.zero_grad(set_to_none=True)
    outs_l = [net(x_l) for net in nets]
    outs_u = [net(x_u) for net in nets]
    cps_loss_terms(trainer._loss_on_lists, outs_l[0], outs_l[1], target, outs_u[0], outs_u[1],
                   cross_fn=cross).total(0.4).backward()
    differ = [not torch.allclose(a[n], p.grad, rtol=1e-3, atol=1e-6) for a, net in zip(mixed, nets)
              for n, p in net.named_parameters() if p.grad is not None]
    assert sum(differ) >= len(differ) // 4  # the reference above matched to 1e-4


def test_final_decay_factor_by_hand():
    from cps3d.training.schedules import final_decay_factor

    # the last quarter of the run: 1 until progress 0.75, then (1 - progress) / 0.25
    assert [final_decay_factor(p, 0.25) for p in (0.0, 0.5, 0.75, 0.8, 0.9, 1.0, 1.2)] == \
        pytest.approx([1.0, 1.0, 1.0, 0.8, 0.4, 0.0, 0.0])
    assert final_decay_factor(0.99, 0.0) == 1.0  # off
    assert final_decay_factor(0.5, 1.0) == pytest.approx(0.5)  # the whole run: linear from the start
    with pytest.raises(ValueError, match="share=1.5"):
        final_decay_factor(0.5, 1.5)
    with pytest.raises(ValueError, match=r"lr_final_decay=-0.1: must be in \[0, 1\]"):
        TrainConfig(lr_final_decay=-0.1)


def test_final_decay_lowers_the_rate_it_trains_with_and_checkpoints_the_schedules(tiny_project, tmp_path):
    """Poly's rate times the decay factor in each epoch (decay over the last half of 4 epochs: factors 1, 1, 1,
    0.5); the optimizer in the checkpoint holds the schedule's own rate, so that a resumed run decays from it."""
    config = TrainConfig(mode="supervised", epochs=4, lr_schedule="poly", initial_lr=0.1, lr_final_decay=0.5, **QUICK)
    trainer = train(tiny_project.dataset_name, tiny_project.preprocessed_root, tmp_path, "3d_fullres", 0, config,
                    device="cpu", show_progress=False)
    ckpt = torch.load(f"{trainer.output_folder}/checkpoint_final.pth", map_location="cpu", weights_only=False)
    poly = [0.1 * (1 - e / 4) ** 0.9 for e in range(4)]
    assert ckpt["logging"]["lrs"] == pytest.approx([poly[0], poly[1], poly[2], 0.5 * poly[3]])
    assert ckpt["optimizer_state"]["param_groups"][0]["lr"] == pytest.approx(poly[3])


def test_final_decay_follows_the_clock_under_max_minutes_for_both_networks(tiny_project, tmp_path):
    from time import time

    config = TrainConfig(epochs=100, max_minutes=1.0, lr_final_decay=0.4, initial_lr=0.1, **QUICK)
    trainer = make_trainer(tiny_project, tmp_path, config)
    trainer.load_checkpoint(str(tiny_project.model_dir / "fold_0" / "checkpoint_final.pth"))
    for opt in trainer.optimizers:  # the plateau schedule's rate, as if never lowered
        opt.param_groups[0]["lr"] = 0.1
    trainer.current_epoch = 10
    trainer._train_started = time() - 48  # 0.8 of the minute spent: further on than epoch 10 of 100
    trainer.on_train_epoch_start()
    # factor (1 - 0.8) / 0.4 = 0.5 (a little less: the clock moved on)
    assert [opt.param_groups[0]["lr"] for opt in trainer.optimizers] == pytest.approx([0.05, 0.05], rel=0.01)
    trainer.on_train_epoch_end([{"loss": 1.0, "sup": 1.0, "cps": 0.0, "loss_1": 1.0, "loss_2": 1.0}])  # the schedule's rate back
    assert [opt.param_groups[0]["lr"] for opt in trainer.optimizers] == [0.1, 0.1]
    trainer._train_started = time()  # no time spent: epoch 70 of 100 decides, factor (1 - 0.7) / 0.4
    trainer.current_epoch = 70
    trainer.on_train_epoch_start()
    assert [opt.param_groups[0]["lr"] for opt in trainer.optimizers] == pytest.approx([0.075, 0.075])
