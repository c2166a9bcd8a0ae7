"""CutMix of the unlabeled cross terms: box masks, mixing of inputs and of teachers' outputs (hand-checked)."""

import pytest
import torch

from cps3d.training.mixing import box_masks, mix, mix_outputs


def _is_one_box(m: torch.Tensor) -> bool:
    idx = m.nonzero()
    if len(idx) == 0:
        return False
    lo, hi = idx.min(0).values, idx.max(0).values
    box = m[tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))]
    return bool((box == 1).all()) and int(m.sum()) == box.numel()


@pytest.mark.parametrize("spatial", [(32, 40), (12, 16, 20)])
def test_box_masks_are_one_box_per_sample_covering_about_the_fraction(spatial):
    g = torch.Generator().manual_seed(0)
    masks = box_masks(16, spatial, g)
    assert masks.shape == (16, 1, *spatial)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    n = torch.tensor(spatial).prod().item()
    for m in masks[:, 0]:
        assert _is_one_box(m)
        # 25-50 % before rounding each side to whole voxels
        assert 0.15 <= m.sum().item() / n <= 0.65
    assert not torch.equal(masks[0], masks[1])


def test_box_masks_are_seeded_and_check_the_fraction():
    a = box_masks(4, (20, 20), torch.Generator().manual_seed(3))
    b = box_masks(4, (20, 20), torch.Generator().manual_seed(3))
    c = box_masks(4, (20, 20), torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    tiny = box_masks(8, (20, 20), torch.Generator().manual_seed(0), fraction=(0.01, 0.01))
    assert all(1 <= m.sum().item() <= 0.03 * 400 for m in tiny)  # about 4 of 400 voxels, at least one
    with pytest.raises(ValueError, match="fraction"):
        box_masks(1, (4, 4), torch.Generator(), fraction=(0.6, 0.3))


def test_mix_takes_the_box_from_the_sample_and_the_rest_from_the_next():
    x = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 2.0), torch.full((1, 2, 2), 3.0)])
    mask = torch.zeros(3, 1, 2, 2)
    mask[:, 0, 0, 0] = 1  # the top-left voxel of every sample is its own
    out = mix(x, mask)
    # roll by one: sample 0 takes the rest from sample 2, sample 1 from sample 0, sample 2 from sample 1
    assert out[:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0]
    assert out[:, 0, 1, 1].tolist() == [3.0, 1.0, 2.0]
    assert out[:, 0, 0, 1].tolist() == [3.0, 1.0, 2.0]


def test_mixed_teacher_labels_are_the_mixed_labels_at_every_scale():
    g = torch.Generator().manual_seed(1)
    logits = [torch.randn(4, 3, 16, 16, generator=g), torch.randn(4, 3, 8, 8, generator=g)]
    mask = box_masks(4, (16, 16), g)
    mixed = mix_outputs(logits, mask)
    assert [m.shape for m in mixed] == [o.shape for o in logits]
    for o, m, scale in zip(logits, mixed, (1, 2)):
        coarse = mask[:, :, ::scale, ::scale]  # nearest downsampling by 2 keeps every other voxel
        labels = o.argmax(1, keepdim=True)
        expected = torch.where(coarse.bool(), labels, torch.roll(labels, 1, 0))
        assert torch.equal(m.argmax(1, keepdim=True), expected)


def test_the_cutmix_option_reaches_the_training_configuration():
    from cps3d.cli import build_parser
    from cps3d.cli.train import _train_config
    from cps3d.training.config import TrainConfig

    parser = build_parser()

    def config(*extra):
        return _train_config(parser.parse_args(["train", "-d", "1", *extra]), None, None, "Dataset001_X")

    assert config().cutmix is False
    assert config("--cutmix").cutmix is True
    assert config("--cutmix", "--no-cutmix").cutmix is False
    with pytest.raises(ValueError, match="cutmix"):
        TrainConfig(mode="supervised", cutmix=True)
