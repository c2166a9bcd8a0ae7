"""The shared image reader (cps3d.images): every kind of broken file is refused with its name and the problem.

SimpleITK's own reading is the reference for what a good file holds; the broken files are made by hand (cut in
half, emptied, poisoned with NaN), so each expected message follows from how the file was made.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from cps3d.images import (
    ImageFileError,
    count_nonfinite,
    error_text,
    read_image_checked,
    read_voxels,
    verify_image,
)


def write(path, array, direction=None):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 2.5)[: image.GetDimension()])
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture()
def volume():
    return np.random.default_rng(0).normal(0, 100, (6, 7, 9)).astype(np.float32)  # z, y, x


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_a_good_file_reads_as_simpleitk_reads_it(tmp_path, volume, ending):
    path = write(tmp_path / f"a{ending}", volume, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    info, voxels = read_image_checked(path, dimension=3)
    assert info.size == (9, 7, 6) and info.dimension == 3 and info.components == 1
    assert info.spacing == pytest.approx((0.8, 0.9, 2.5))
    np.testing.assert_array_equal(voxels, sitk.GetArrayFromImage(sitk.ReadImage(str(path))))


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha"])
def test_truncated_file_is_refused(tmp_path, volume, ending):
    path = write(tmp_path / f"a{ending}", volume)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    if ending.startswith(".nii"):  # what nnU-Net's reader does with it: no error, zeros instead of the lost half
        assert (sitk.GetArrayFromImage(sitk.ReadImage(str(path))) == 0).sum() > volume.size // 3
    with pytest.raises(ImageFileError, match="truncated or corrupt") as e:
        verify_image(path)
    assert e.value.path == str(path) and str(e.value).startswith(f"{path}: ")


def test_nan_and_inf_voxels_are_counted(tmp_path, volume):
    volume[0, 0, :3] = np.nan
    volume[5, 6, 8] = -np.inf
    path = write(tmp_path / "a.nii.gz", volume)
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()  # ITK turns them into 0
    with pytest.raises(ImageFileError, match=r"contains 4 NaN or infinite voxel\(s\) of 378"):
        verify_image(path)
    assert count_nonfinite(volume) == 4 and count_nonfinite(np.ones(3, np.int16)) == 0


def test_empty_missing_and_corrupt_files(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(ImageFileError, match=r"empty.nii.gz: empty file \(0 bytes\)"):
        verify_image(tmp_path / "empty.nii.gz")
    with pytest.raises(FileNotFoundError, match="nowhere.nii.gz: file not found"):
        read_voxels(tmp_path / "nowhere.nii.gz")
    (tmp_path / "text.nii.gz").write_bytes(b"not an image")
    with pytest.raises(ImageFileError, match=r"text.nii.gz: cannot be read \(Unable to determine ImageIO reader"):
        verify_image(tmp_path / "text.nii.gz")


def test_dimension_and_components(tmp_path, volume):
    flat = write(tmp_path / "flat.nii.gz", volume[0])
    with pytest.raises(ImageFileError, match=r"is a 2-D image \(size \(9, 7\)\); 3-D images are expected"):
        verify_image(flat, dimension=3)
    assert verify_image(flat, dimension=2).size == (9, 7)
    vector = sitk.Compose(sitk.GetImageFromArray(volume), sitk.GetImageFromArray(volume))
    sitk.WriteImage(vector, str(tmp_path / "vector.nii.gz"))
    with pytest.raises(ImageFileError, match="has 2 components per voxel"):
        verify_image(tmp_path / "vector.nii.gz")


def test_trailing_axis_of_length_one_is_the_same_image(tmp_path, volume):
    import nibabel as nib

    nib.save(nib.Nifti1Image(volume.T[..., None], np.eye(4)), str(tmp_path / "x.nii.gz"))  # (x, y, z, 1)
    info, voxels = read_image_checked(tmp_path / "x.nii.gz", dimension=3)  # ITK sees 3-D
    np.testing.assert_array_equal(voxels, volume)


def test_error_text_keeps_the_reason():
    itk = RuntimeError("Exception thrown in SimpleITK ImageFileReader_Execute: /src/sitkImageReaderBase.cxx:99:\n"
                       'sitk::ERROR: Unable to determine ImageIO reader for "x.nii.gz"')
    assert error_text(itk) == 'Unable to determine ImageIO reader for "x.nii.gz"'
    nrrd = RuntimeError("Exception thrown in SimpleITK ImageFileReader_Execute: /src/itkNrrdImageIO.cxx:935:\n"
                        "ITK ERROR: NrrdImageIO(0x55f70e663800): Read: Error reading a.nrrd:\n"
                        "[nrrd] _nrrdEncodingGzip_read: expected 46080 bytes but received 30602\n")
    assert error_text(nrrd) == "Read: Error reading a.nrrd:; [nrrd] _nrrdEncodingGzip_read: expected 46080 bytes " \
                               "but received 30602"
    assert error_text(ValueError("first line\nsecond line")) == "first line"  # not the last line
    assert error_text(KeyError()) == "KeyError"
