"""The shared tiny-model fixture produces what inference and evaluation tests rely on."""

import torch


def test_tiny_project_has_a_two_network_checkpoint(tiny_project):
    fold = tiny_project.model_dir / "fold_0"
    for name in ("checkpoint_final.pth", "progress.png", "cps3d_config.json"):
        assert (fold / name).is_file(), name
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        assert (tiny_project.model_dir / name).is_file(), name
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["cps3d"]["mode"] == "cps"
    assert ckpt["init_args"]["configuration"] == "3d_fullres"
    w1, w2 = ckpt["network_weights"], ckpt["network_weights_2"]
    assert w1.keys() == w2.keys()
    # different initialisation and separate training: the two networks differ
    assert any(not torch.equal(w1[k], w2[k]) for k in w1 if w1[k].is_floating_point())
