"""Tests of the synthetic ImageNet-layout sample dataset (seresnext/sample_data.py)."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seresnext.sample_data import (
    MAX_CLASSES,
    SampleDataError,
    choose_image_modes,
    generate,
    main,
)

SMALL = dict(num_classes=3, train_per_class=4, val_per_class=2, min_size=64, max_size=128)
WNID = re.compile(r"^n\d{8}$")
VAL_NAME = re.compile(r"^ILSVRC2012_val_\d{8}\.JPEG$")


def read_val_labels(root: Path) -> list[tuple[str, int]]:
    return [(name, int(label)) for name, label in
            (line.split(" ") for line in (root / "val_label.txt").read_text().splitlines())]


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def default_set(tmp_path_factory) -> Path:
    """The default-sized set (10 classes x 100 train x 20 val), generated once for this module."""
    root = tmp_path_factory.mktemp("default") / "data"
    generate(root, workers=2)
    return root


def test_layout_and_names(tmp_path):
    info = generate(tmp_path / "data", workers=1, **SMALL)
    root = tmp_path / "data"
    assert sorted(p.name for p in root.iterdir()) == [
        "synset_words.txt", "train", "val", "val_flat", "val_label.txt"]
    assert info.num_train == 12 and info.num_val == 6 and info.num_classes == 3
    assert info.bytes_on_disk > 0 and info.val_flat_dir == root / "val_flat"
    assert list(info.wnids) == sorted(info.wnids) and all(WNID.match(w) for w in info.wnids)
    for split in ("train", "val"):
        assert sorted(p.name for p in (root / split).iterdir()) == list(info.wnids)
    for wnid in info.wnids:
        train_names = sorted(p.name for p in (root / "train" / wnid).iterdir())
        assert train_names == sorted(f"{wnid}_{n}.JPEG" for n in range(1, 5))
        assert all(VAL_NAME.match(p.name) for p in (root / "val" / wnid).iterdir())
    synsets = [line.split(" ", 1) for line in (root / "synset_words.txt").read_text().splitlines()]
    assert [wnid for wnid, _ in synsets] == list(info.wnids)
    assert [name for _, name in synsets] == list(info.class_names) == ["circle", "square", "triangle"]
    assert not [p for p in root.rglob("*") if p.name.startswith(".")], "temp files left behind"


def test_val_labels_match_class_folders_and_flat_folder(default_set):
    labels = read_val_labels(default_set)
    names = [name for name, _ in labels]
    assert names == [f"ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, 201)]
    wnids = sorted(p.name for p in (default_set / "val").iterdir())
    for name, label in labels:
        in_class_folder = default_set / "val" / wnids[label] / name
        assert in_class_folder.read_bytes() == (default_set / "val_flat" / name).read_bytes()
    assert sorted(p.name for p in (default_set / "val_flat").iterdir()) == names
    assert sum(1 for _ in (default_set / "val").rglob("*.JPEG")) == 200
    classes_in_order = [label for _, label in labels]
    assert classes_in_order != sorted(classes_in_order), "val images must be shuffled across classes"
    assert all(classes_in_order.count(c) == 20 for c in range(10))


def test_same_seed_gives_identical_bytes_whatever_the_workers(tmp_path):
    generate(tmp_path / "a", seed=5, workers=1, **SMALL)
    generate(tmp_path / "b", seed=5, workers=2, **SMALL)
    generate(tmp_path / "c", seed=6, workers=2, **SMALL)
    first, second, other = (file_bytes(tmp_path / name) for name in "abc")
    assert first == second
    train_images = [key for key in first if key.startswith("train")]
    assert all(first[key] != other[key] for key in train_images)
    assert first["val_label.txt"] != other["val_label.txt"]


def test_images_are_jpegs_of_varied_sizes_within_bounds(default_set):
    aspect_ratios = set()
    for path in default_set.rglob("*.JPEG"):
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert all(200 <= side <= 500 for side in image.size), (path, image.size)
            aspect_ratios.add(round(image.width / image.height, 2))
    assert len(aspect_ratios) > 20
    assert min(aspect_ratios) < 0.8 and max(aspect_ratios) > 1.25


def test_default_set_has_grayscale_and_cmyk_jpegs_in_both_splits(default_set):
    for split in ("train", "val"):
        modes = [Image.open(p).mode for p in (default_set / split).rglob("*.JPEG")]
        assert {"RGB", "L", "CMYK"} == set(modes)
        assert modes.count("L") <= 0.05 * len(modes) and modes.count("CMYK") <= 0.05 * len(modes)
    with Image.open(next((default_set / "train").rglob("*.JPEG"))) as image:
        image.load()


def test_image_modes_are_about_two_percent_each_and_at_least_one():
    for count in (2, 12, 200, 1000):
        modes = choose_image_modes(0, "train", count)
        assert len(modes) == count and modes.count("L") >= 1 and modes.count("CMYK") >= 1
        assert modes.count("L") == modes.count("CMYK") == max(1, round(0.02 * count))
    assert choose_image_modes(0, "val", 1) == ["RGB"]
    assert choose_image_modes(0, "val", 200) == choose_image_modes(0, "val", 200)
    assert choose_image_modes(0, "val", 200) != choose_image_modes(1, "val", 200)


def _mean_colour(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        image.draft("RGB", (image.width // 8, image.height // 8))
        return np.asarray(image.convert("RGB"), dtype=np.float64).mean(axis=(0, 1))


def test_mean_colour_does_not_predict_the_class(default_set):
    wnids = sorted(p.name for p in (default_set / "train").iterdir())
    class_means = np.stack([np.mean([_mean_colour(p) for p in (default_set / "train" / w).iterdir()], axis=0)
                            for w in wnids])
    labels = read_val_labels(default_set)
    val_means = np.stack([_mean_colour(default_set / "val_flat" / name) for name, _ in labels])
    distances = np.linalg.norm(val_means[:, None, :] - class_means[None, :, :], axis=2)
    accuracy = np.mean(distances.argmin(axis=1) == np.array([label for _, label in labels]))
    assert accuracy < 0.4, accuracy


def test_refuses_a_non_empty_folder_unless_overwrite(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(SampleDataError, match=re.escape(str(root))):
        generate(root, workers=1, **SMALL)
    generate(root, workers=1, overwrite=True, **SMALL)
    generate(root, workers=1, overwrite=True, **{**SMALL, "num_classes": 2})
    assert (root / "notes.txt").read_text() == "keep me"
    assert len(list((root / "train").iterdir())) == 2
    assert len(read_val_labels(root)) == 4 == len(list((root / "val_flat").iterdir()))


def test_more_classes_than_shapes_adds_outlined_styles_up_to_the_maximum(tmp_path):
    info = generate(tmp_path / "data", num_classes=MAX_CLASSES, train_per_class=1, val_per_class=1,
                    min_size=64, max_size=96, workers=2)
    assert len(set(info.class_names)) == MAX_CLASSES
    assert info.class_names[-1].endswith(" outline") and info.wnids == tuple(sorted(info.wnids))
    with pytest.raises(ValueError, match=f"--num-classes.*{MAX_CLASSES}"):
        generate(tmp_path / "more", num_classes=MAX_CLASSES + 1)


@pytest.mark.parametrize("flags, named", [
    (["--num-classes", "99"], "--num-classes"),
    (["--num-classes", "0"], "--num-classes"),
    (["--train-per-class", "0"], "--train-per-class"),
    (["--val-per-class", "-1"], "--val-per-class"),
    (["--min-size", "300", "--max-size", "200"], "--min-size"),
    (["-j", "0"], "-j"),
    (["--seed", "abc"], "--seed"),
    (["--no-such-flag"], "--no-such-flag"),
])
def test_cli_bad_flags_exit_2_with_one_line(tmp_path, capsys, flags, named):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "data"), *flags])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and named in error and "Traceback" not in error


def test_cli_refuses_non_empty_folder_then_overwrites(tmp_path, repo_root):
    root = tmp_path / "data"
    command = [sys.executable, "-m", "seresnext.sample_data", "--out", str(root), "--num-classes", "2",
               "--train-per-class", "2", "--val-per-class", "1", "--min-size", "64", "--max-size", "80", "-j", "1"]
    first = subprocess.run(command, cwd=repo_root, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("\n") == 1 and "4 train + 2 val" in first.stdout and "MB" in first.stdout
    refused = subprocess.run(command, cwd=repo_root, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert str(root) in refused.stderr and "--overwrite" in refused.stderr
    assert subprocess.run([*command, "--overwrite"], cwd=repo_root, capture_output=True).returncode == 0
