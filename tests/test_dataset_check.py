"""`cps3d check` catches every kind of bad input, names the file, and reports all problems at once."""

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from cps3d.cli import main
from cps3d.dataset import (
    DatasetError,
    RawDataset,
    check_dataset,
    ensure_checked,
    find_dataset_name,
)
from toy_data import write_toy_dataset


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("clean") / "raw", labeled=3, unlabeled=2, test=1)


@pytest.fixture()
def ds(clean_dataset, tmp_path):
    target = tmp_path / "raw" / clean_dataset.name
    shutil.copytree(clean_dataset, target)
    return target


def problems_of(folder):
    return check_dataset(RawDataset.load(folder), progress=False)


def messages_for(problems, filename):
    return [p.message for p in problems if p.path.endswith(filename)]


def rewrite(path, fn):
    img = sitk.ReadImage(str(path))
    out = fn(img)
    sitk.WriteImage(out, str(path))


def test_clean_dataset_passes(clean_dataset):
    assert problems_of(clean_dataset) == []


def test_image_without_label_and_label_without_image(ds):
    (ds / "labelsTr" / "toy_001.nii.gz").unlink()
    shutil.copy(ds / "labelsTr" / "toy_000.nii.gz", ds / "labelsTr" / "orphan.nii.gz")
    probs = problems_of(ds)
    assert any("no label" in m for m in messages_for(probs, "labelsTr/toy_001.nii.gz"))
    assert any("label without image" in m for m in messages_for(probs, "labelsTr/orphan.nii.gz"))


@pytest.mark.parametrize("change, expected", [
    (lambda im: (im.SetSpacing((1.5, 1.5, 2.0)), im)[1], "spacing"),
    (lambda im: (im.SetOrigin((-30.0, -29.0, 10.0)), im)[1], "origin"),
    (lambda im: (im.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1)), im)[1], "direction"),
    (lambda im: im[:, :, 1:], "shape"),
])
def test_geometry_mismatch_between_image_and_label(ds, change, expected):
    rewrite(ds / "labelsTr" / "toy_002.nii.gz", change)
    msgs = messages_for(problems_of(ds), "labelsTr/toy_002.nii.gz")
    assert len(msgs) == 1 and "geometry differs" in msgs[0] and expected in msgs[0]


def test_tiny_header_noise_is_tolerated(ds):
    rewrite(ds / "labelsTr" / "toy_002.nii.gz", lambda im: (im.SetOrigin((-30.0 + 1e-4, -30.0, 10.0)), im)[1])
    assert problems_of(ds) == []


def test_undeclared_label_values(ds):
    def add_label(im):
        a = sitk.GetArrayFromImage(im)
        a[0, 0, 0] = 7
        out = sitk.GetImageFromArray(a)
        out.CopyInformation(im)
        return out

    rewrite(ds / "labelsTr" / "toy_000.nii.gz", add_label)
    msgs = messages_for(problems_of(ds), "labelsTr/toy_000.nii.gz")
    assert msgs and "[7]" in msgs[0] and "not declared" in msgs[0]


def test_corrupt_and_truncated_files(ds):
    (ds / "imagesTr" / "toy_000_0000.nii.gz").write_bytes(b"not an image at all")
    data = (ds / "imagesUnlabeled" / "unl_000_0000.nii.gz").read_bytes()
    (ds / "imagesUnlabeled" / "unl_000_0000.nii.gz").write_bytes(data[: len(data) // 3])
    probs = problems_of(ds)
    assert any("cannot be read" in m for m in messages_for(probs, "imagesTr/toy_000_0000.nii.gz"))
    assert any("cannot be read" in m for m in messages_for(probs, "imagesUnlabeled/unl_000_0000.nii.gz"))


def test_empty_file_is_called_empty(ds):
    (ds / "imagesTr" / "toy_002_0000.nii.gz").write_bytes(b"")
    (ds / "imagesUnlabeled" / "unl_001_0000.nii.gz").write_bytes(b"")
    probs = problems_of(ds)
    assert messages_for(probs, "imagesTr/toy_002_0000.nii.gz") == ["empty file (0 bytes)"]
    assert messages_for(probs, "imagesUnlabeled/unl_001_0000.nii.gz") == ["empty file (0 bytes)"]


def test_nan_and_inf_voxels(ds):
    def poison(im):
        a = sitk.GetArrayFromImage(im).astype(np.float32)
        a[1, 2, 3] = np.nan
        a[2, 2, 3] = np.inf
        out = sitk.GetImageFromArray(a)
        out.CopyInformation(im)
        return out

    rewrite(ds / "imagesTr" / "toy_001_0000.nii.gz", poison)
    rewrite(ds / "imagesUnlabeled" / "unl_001_0000.nii.gz", poison)
    probs = problems_of(ds)
    assert any("2 NaN or infinite" in m for m in messages_for(probs, "imagesTr/toy_001_0000.nii.gz"))
    assert any("NaN" in m for m in messages_for(probs, "imagesUnlabeled/unl_001_0000.nii.gz"))


def test_2d_images_in_a_3d_dataset(ds, capsys):
    flat = np.full((48, 48), 40, np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(flat), str(ds / "imagesTr" / "toy_001_0000.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((48, 48), np.uint8)), str(ds / "labelsTr" / "toy_001.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(flat), str(ds / "imagesUnlabeled" / "unl_000_0000.nii.gz"))
    probs = problems_of(ds)
    for name in ("imagesTr/toy_001_0000.nii.gz", "imagesUnlabeled/unl_000_0000.nii.gz"):
        assert messages_for(probs, name) == [
            "is a 2-D image but the dataset's images are 3-D (2 of 3 labeled images); nnU-Net cannot mix them"]
    assert len(probs) == 2  # the 2-D label matches its 2-D image: nothing else to say
    assert main(["check", "-d", ds.name, "--raw-root", str(ds.parent), "--no-progress"]) == 1
    assert "toy_001_0000.nii.gz: is a 2-D image" in capsys.readouterr().err


def test_channel_count(ds):
    # a second channel file that dataset.json does not declare, and a multi-component image
    shutil.copy(ds / "imagesTr" / "toy_000_0000.nii.gz", ds / "imagesTr" / "toy_000_0001.nii.gz")
    img = sitk.ReadImage(str(ds / "imagesUnlabeled" / "unl_000_0000.nii.gz"))
    sitk.WriteImage(sitk.Compose(img, img), str(ds / "imagesUnlabeled" / "unl_000_0000.nii.gz"))
    probs = problems_of(ds)
    assert any("not in channel_names" in p.message and "toy_000" in p.path for p in probs)
    assert any("components" in m for m in messages_for(probs, "imagesUnlabeled/unl_000_0000.nii.gz"))
    assert messages_for(probs, "labelsTr/toy_000.nii.gz") == []  # its image exists: no "label without image"


def test_missing_channel_of_a_two_channel_dataset(ds):
    dj = json.loads((ds / "dataset.json").read_text())
    dj["channel_names"] = {"0": "CT", "1": "CT2"}
    (ds / "dataset.json").write_text(json.dumps(dj))
    for f in (ds / "imagesTr").glob("*_0000.nii.gz"):
        if "toy_001" not in f.name:
            shutil.copy(f, str(f).replace("_0000", "_0001"))
    probs = problems_of(ds)
    assert any("missing channel file(s) toy_001_0001.nii.gz" in p.message for p in probs)


def test_misnamed_files_and_numtraining(ds):
    shutil.copy(ds / "imagesTr" / "toy_000_0000.nii.gz", ds / "imagesTr" / "badname.nii.gz")
    dj = json.loads((ds / "dataset.json").read_text())
    dj["numTraining"] = 5
    (ds / "dataset.json").write_text(json.dumps(dj))
    probs = problems_of(ds)
    assert any("CASE_XXXX" in m for m in messages_for(probs, "imagesTr/badname.nii.gz"))


def test_numtraining_mismatch(ds):
    dj = json.loads((ds / "dataset.json").read_text())
    dj["numTraining"] = 5
    (ds / "dataset.json").write_text(json.dumps(dj))
    assert any("numTraining is 5 but 3" in m for m in messages_for(problems_of(ds), "dataset.json"))


def test_empty_or_missing_training_folder(ds):
    for f in (ds / "imagesTr").iterdir():
        f.unlink()
    probs = problems_of(ds)
    assert any("no images" in m for m in messages_for(probs, "imagesTr"))
    shutil.rmtree(ds / "imagesTr")
    assert any("folder not found" in m for m in messages_for(problems_of(ds), "imagesTr"))


def test_bad_dataset_json(ds):
    (ds / "dataset.json").write_text(json.dumps({"labels": {"x": 1}}))
    with pytest.raises(DatasetError) as e:
        RawDataset.load(ds)
    text = str(e.value)
    assert "dataset.json" in text and "'channel_names'" in text and "'file_ending'" in text
    (ds / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        RawDataset.load(ds)


def test_cli_dataset_json_problems_exit_with_1(ds, capsys):
    check = ["check", "-d", ds.name, "--raw-root", str(ds.parent), "--no-progress"]
    (ds / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    assert main(check) == 1  # a dataset that fails the check, as the README says; 2 is for usage errors
    err = capsys.readouterr().err
    assert f"{ds.name}: 3 problem(s):" in err and "dataset.json: missing key 'channel_names'" in err
    (ds / "dataset.json").write_text("{not json")
    assert main(check) == 1
    assert "dataset.json: not valid JSON" in capsys.readouterr().err
    (ds / "dataset.json").unlink()
    assert main(check) == 1
    assert f"{ds / 'dataset.json'}: file not found" in capsys.readouterr().err
    assert main(["check", "-d", "Dataset902_Nothing", "--raw-root", str(ds.parent)]) == 2  # no such dataset


def test_all_problems_reported_at_once_and_cli_exit_code(ds, capsys):
    (ds / "labelsTr" / "toy_001.nii.gz").unlink()
    (ds / "imagesUnlabeled" / "unl_000_0000.nii.gz").write_bytes(b"garbage")
    code = main(["check", "-d", ds.name, "--raw-root", str(ds.parent), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "2 problem(s)" in err and "toy_001.nii.gz" in err and "unl_000_0000.nii.gz" in err


@pytest.mark.parametrize("command", ["plan", "preprocess"])
def test_plan_and_preprocess_exit_with_1_when_the_check_fails(ds, tmp_path, command, capsys):
    (ds / "imagesUnlabeled" / "unl_000_0000.nii.gz").write_bytes(b"")
    code = main([command, "-d", ds.name, "--raw-root", str(ds.parent), "--preprocessed-root", str(tmp_path / "pre"),
                 "-np", "1", "--no-progress"])
    assert code == 1  # the dataset failed its check, as with 'cps3d check'; 2 is for usage errors
    assert "unl_000_0000.nii.gz: empty file (0 bytes)" in capsys.readouterr().err


def test_cli_accepts_clean_dataset_by_id_and_needs_a_root(clean_dataset, capsys, monkeypatch):
    assert main(["check", "-d", "901", "--raw-root", str(clean_dataset.parent), "--no-progress"]) == 0
    assert "OK (3 labeled, 2 unlabeled, 1 test" in capsys.readouterr().out
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert main(["check", "-d", "901"]) == 2
    err = capsys.readouterr().err
    assert "--raw-root" in err and "nnUNet_raw" in err


def test_cli_records_the_passed_check_under_the_resolved_preprocessed_root(ds, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("nnUNet_preprocessed", "~/pre")  # resolved like every other root: ~ expanded
    assert main(["check", "-d", ds.name, "--raw-root", str(ds.parent), "--no-progress"]) == 0
    assert (tmp_path / "home" / "pre" / ds.name / "cps3d_check.json").is_file()
    assert not (tmp_path / "~").exists()
    monkeypatch.delenv("nnUNet_preprocessed")
    assert main(["check", "-d", ds.name, "--raw-root", str(ds.parent), "--no-progress",
                 "--preprocessed-root", "rel"]) == 0
    assert (tmp_path / "rel" / ds.name / "cps3d_check.json").is_file()


def test_dataset_name_resolution(clean_dataset, tmp_path):
    root = str(clean_dataset.parent)
    assert find_dataset_name(901, [root]) == clean_dataset.name
    assert find_dataset_name("Dataset901_Toy", [root]) == "Dataset901_Toy"
    with pytest.raises(FileNotFoundError, match="no dataset with id 902"):
        find_dataset_name("902", [root])
    with pytest.raises(ValueError, match="numeric id"):
        find_dataset_name("toy", [root])


def test_check_stamp_skips_unchanged_and_rechecks_changed(ds, tmp_path):
    stamp_dir = tmp_path / "pre"
    ensure_checked(RawDataset.load(ds), stamp_dir, progress=False)
    assert (stamp_dir / "cps3d_check.json").is_file()
    ensure_checked(RawDataset.load(ds), stamp_dir, progress=False)  # unchanged: passes from the stamp
    (ds / "imagesUnlabeled" / "unl_001_0000.nii.gz").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="unl_001_0000.nii.gz"):
        ensure_checked(RawDataset.load(ds), stamp_dir, progress=False)


def test_channel_file_names_one_convention():
    from cps3d.dataset import channel_file_name, channel_mismatch, split_channel_name

    assert channel_file_name("case_7", 12, ".nii.gz") == "case_7_0012.nii.gz"
    assert split_channel_name("case_7_0012") == ("case_7", 12)
    assert split_channel_name("case_7_012") is None and split_channel_name("_0000") is None
    assert channel_mismatch([0, 2, 5], 3) == ([1], [5])
    assert channel_mismatch(range(2), 2) == ([], [])
