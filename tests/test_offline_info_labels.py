"""get_info.py and make_val_label.py: upstream lines, one continuous index, clear errors."""
import io
import tarfile

import numpy as np
import pytest

import get_info
import make_val_label
from offline_helpers import run_tool, write_image
from seresnext.formats import read_info, read_val_label
from seresnext.imagenet import labels_from_devkit


def test_bin_info_lines_are_sorted_with_one_index(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prep_bin").mkdir()
    for name in ("b.bin", "a.bin", "c.bin", "notes.txt"):
        (tmp_path / "prep_bin" / name).write_bytes(b"x")
    status, out, _ = run_tool(get_info, ["bin", "./prep_bin", "./seresnext50_val.info", "224", "224"])
    assert status == 0 and "3 entries" in out
    assert (tmp_path / "seresnext50_val.info").read_text() == (
        "0 ./prep_bin/a.bin 224 224\n1 ./prep_bin/b.bin 224 224\n2 ./prep_bin/c.bin 224 224\n")


def test_jpg_info_reads_real_sizes_across_extensions(tmp_path):
    folder = tmp_path / "val"
    write_image(folder / "b.JPEG", 300, 200)
    write_image(folder / "a.jpg", 120, 90, mode="L")
    write_image(folder / "c.jpeg", 64, 48, mode="CMYK")
    write_image(folder / "d.JPG", 50, 70)
    write_image(folder / "e.png", 50, 70, fmt="PNG")  # upstream lists JPEG extensions only
    status, _, _ = run_tool(get_info, ["jpg", folder, tmp_path / "ImageNet.info"])
    assert status == 0
    entries = read_info(tmp_path / "ImageNet.info")
    assert [(e.index, e.path.rsplit("/", 1)[1], e.width, e.height) for e in entries] == [
        (0, "a.jpg", 120, 90), (1, "b.JPEG", 300, 200), (2, "c.jpeg", 64, 48), (3, "d.JPG", 50, 70)]


@pytest.mark.parametrize("argv, message", [
    (["bin", "{tmp}/nope", "{tmp}/x.info", "224", "224"], "nope: no such folder"),
    (["bin", "{tmp}/empty", "{tmp}/x.info", "224", "224"], "no .bin files"),
    (["bin", "{tmp}/empty", "{tmp}/x.info", "224"], "bin mode takes 4 arguments"),
    (["bin", "{tmp}/empty", "{tmp}/x.info", "wide", "224"], "<width> must be a positive integer"),
    (["jpg", "{tmp}/empty", "{tmp}/x.info"], "no .jpg/.jpeg files"),
    (["png", "{tmp}/empty", "{tmp}/x.info"], "first argument must be 'bin' or 'jpg'"),
])
def test_get_info_errors_name_the_problem(tmp_path, argv, message):
    (tmp_path / "empty").mkdir()
    status, _, err = run_tool(get_info, [a.format(tmp=tmp_path) for a in argv])
    assert status == 1 and message in err
    assert not (tmp_path / "x.info").exists()


def test_jpg_info_lists_unreadable_files_and_writes_nothing(tmp_path):
    write_image(tmp_path / "val" / "a.jpg", 80, 60)
    (tmp_path / "val" / "b.jpg").write_text("not a jpeg")
    status, _, err = run_tool(get_info, ["jpg", tmp_path / "val", tmp_path / "x.info"])
    assert status == 1 and "b.jpg" in err
    assert not (tmp_path / "x.info").exists()


def test_val_label_from_class_folders(tmp_path):
    for wnid, names in {"n02": ["ILSVRC2012_val_00000002.JPEG"],
                        "n01": ["ILSVRC2012_val_00000003.JPEG", "ILSVRC2012_val_00000001.JPEG"]}.items():
        for name in names:
            write_image(tmp_path / "val" / wnid / name, 40, 40)
    status, _, err = run_tool(make_val_label, ["folder", tmp_path / "val", tmp_path / "val_label.txt"])
    assert status == 0, err
    assert (tmp_path / "val_label.txt").read_text() == (
        "ILSVRC2012_val_00000001.JPEG 0\nILSVRC2012_val_00000002.JPEG 1\nILSVRC2012_val_00000003.JPEG 0\n")


def _devkit(path, synsets, ground_truth):
    scipy_io = pytest.importorskip("scipy.io")
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O"),
             ("children", "O"), ("wordnet_height", "O"), ("num_train_images", "O")]
    table = np.array([(i, w, w + " words", "", c, np.zeros(0), 0, 1300) for i, w, c in synsets], dtype=dtype)
    meta = io.BytesIO()
    scipy_io.savemat(meta, {"synsets": table.reshape(-1, 1)})
    with tarfile.open(path, "w:gz") as archive:
        for name, data in (("ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue()),
                           ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
                            "".join(f"{g}\n" for g in ground_truth).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_val_label_from_devkit_maps_ids_to_sorted_wnids(tmp_path):
    # devkit ids are not in WNID order; id 4 is an inner node (has children) and is not a class
    devkit = _devkit(tmp_path / "ILSVRC2012_devkit_t12.tar.gz",
                     [(1, "n03", 0), (2, "n01", 0), (3, "n02", 0), (4, "n00", 3)], [1, 2, 3, 2])
    wnids, rows = labels_from_devkit(devkit)
    assert wnids == ["n01", "n02", "n03"]
    assert rows == [("ILSVRC2012_val_00000001.JPEG", 2), ("ILSVRC2012_val_00000002.JPEG", 0),
                    ("ILSVRC2012_val_00000003.JPEG", 1), ("ILSVRC2012_val_00000004.JPEG", 0)]
    status, _, err = run_tool(make_val_label, ["devkit", devkit, tmp_path / "val_label.txt"])
    assert status == 0, err
    assert read_val_label(tmp_path / "val_label.txt") == {
        "ILSVRC2012_val_00000001": 2, "ILSVRC2012_val_00000002": 0, "ILSVRC2012_val_00000003": 1,
        "ILSVRC2012_val_00000004": 0}


def test_val_label_errors_name_the_source(tmp_path):
    status, _, err = run_tool(make_val_label, ["devkit", tmp_path / "missing.tar.gz", tmp_path / "v.txt"])
    assert status == 1 and "missing.tar.gz: no such file" in err
    (tmp_path / "junk.tar.gz").write_bytes(b"junk")
    status, _, err = run_tool(make_val_label, ["devkit", tmp_path / "junk.tar.gz", tmp_path / "v.txt"])
    assert status == 1 and "junk.tar.gz: not a readable devkit archive" in err
    devkit = _devkit(tmp_path / "bad.tar.gz", [(1, "n01", 0)], [1, 7])
    status, _, err = run_tool(make_val_label, ["devkit", devkit, tmp_path / "v.txt"])
    assert status == 1 and "ILSVRC2012_validation_ground_truth.txt:2" in err
    (tmp_path / "flat").mkdir()
    status, _, err = run_tool(make_val_label, ["folder", tmp_path / "flat", tmp_path / "v.txt"])
    assert status == 1 and "no class sub-folders" in err
