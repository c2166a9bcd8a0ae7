"""Atomic writes: the previous file survives a failure, no temporary file is left, and permissions follow the umask."""

import os
import stat

import pytest

from cps3d.files import atomic_path, read_json, write_json


def test_write_json_round_trip_and_permissions(tmp_path):
    import numpy as np

    path = tmp_path / "sub" / "a.json"
    write_json(path, {"x": np.float32(1.5), "n": np.int64(3), "arr": np.arange(2), "t": (1, 2)})
    assert read_json(path) == {"x": 1.5, "n": 3, "arr": [0, 1], "t": [1, 2]}
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "b.json"
    write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write("{half")
            raise RuntimeError("crash")
    assert read_json(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["b.json"]


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_check_output_folder(tmp_path):
    from cps3d.files import check_output_folder

    assert check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # nothing is created
    assert check_output_folder(tmp_path) == tmp_path
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match="a_file: the output folder exists and is not a folder"):
        check_output_folder(tmp_path / "a_file")
    with pytest.raises(ValueError, match=f"the results cannot be created: {tmp_path / 'a_file'} is a file"):
        check_output_folder(tmp_path / "a_file" / "sub", "results")


# ------------------------------------------------------------------------------ content keys and the atomic copy
def test_json_digest_follows_the_settings_not_their_key_order():
    from cps3d.files import json_digest

    assert json_digest({"a": 1, "b": [1, 2]}) == json_digest({"b": [1, 2], "a": 1})
    assert json_digest({"a": 1}) != json_digest({"a": 2})
    assert len(json_digest({})) == 64


def test_stat_digest_changes_with_a_files_size_time_or_name(tmp_path):
    from cps3d.files import stat_digest

    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    key = stat_digest([("x", f)])
    assert stat_digest([("x", f)]) == key
    assert stat_digest([("y", f)]) != key  # the name is part of the key
    assert stat_digest([("x", f)], prefix="p") != key
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert stat_digest([("x", f)]) != key
    touched = stat_digest([("x", f)])
    f.write_bytes(b"abcd")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert stat_digest([("x", f)]) != touched


def test_copy_atomic_copies_and_leaves_no_temporary(tmp_path):
    from cps3d.files import copy_atomic

    src = tmp_path / "a.nii.gz"
    src.write_bytes(b"label map")
    dst = tmp_path / "out" / "a.nii.gz"
    copy_atomic(src, dst)
    assert dst.read_bytes() == b"label map"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["a.nii.gz"]
    with pytest.raises(FileNotFoundError):
        copy_atomic(tmp_path / "missing.nii.gz", dst)
    assert dst.read_bytes() == b"label map" and sorted(p.name for p in dst.parent.iterdir()) == ["a.nii.gz"]
