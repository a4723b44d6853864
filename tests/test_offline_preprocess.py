"""preprocess_se_resnext50_32x4d_pth.py: upstream's bytes, in parallel, resumable, failures listed."""
from pathlib import Path

import numpy as np
import pytest

import preprocess_se_resnext50_32x4d_pth as preprocess_tool
from offline_helpers import IMAGE_SPECS, make_val_folder, run_tool, upstream_preprocess_bytes, write_image
from seresnext import preprocess
from seresnext.model import IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture(scope="module")
def val_folder(tmp_path_factory) -> Path:
    return make_val_folder(tmp_path_factory.mktemp("val")/ "val")[0].parent


def test_bin_files_equal_upstream_algorithm_bytes(val_folder, tmp_path):
    status, out, err = run_tool(preprocess_tool, [val_folder, tmp_path / "bins", "-j", "2"])
    assert status == 0, err
    assert f"{len(IMAGE_SPECS)} written" in out
    sources = sorted(val_folder.iterdir())
    assert len(sources) == len(IMAGE_SPECS)
    for source in sources:
        produced = (tmp_path / "bins" / (source.name.split(".")[0] + ".bin")).read_bytes()
        assert len(produced) == 602112
        assert produced == upstream_preprocess_bytes(source), source.name


def test_normalisation_constants_are_the_models():
    assert preprocess.MEAN == IMAGENET_MEAN and preprocess.STD == IMAGENET_STD


def test_single_process_equals_parallel(val_folder, tmp_path):
    one = preprocess.preprocess_folder(val_folder, tmp_path / "one", jobs=1)
    two = preprocess.preprocess_folder(val_folder, tmp_path / "two", jobs=2)
    assert one.written == two.written == len(IMAGE_SPECS)
    for path in (tmp_path / "one").iterdir():
        assert path.read_bytes() == (tmp_path / "two" / path.name).read_bytes()


def test_bad_files_are_listed_and_the_rest_is_written(tmp_path):
    source = tmp_path / "val"
    make_val_folder(source, IMAGE_SPECS[:3])
    (source / "ILSVRC2012_val_00000010.JPEG").write_text("this is not an image")
    good = write_image(tmp_path / "full.jpg", 400, 300)
    (source / "ILSVRC2012_val_00000011.JPEG").write_bytes(good.read_bytes()[:2000])  # truncated JPEG
    (source / "ILSVRC2012_val_00000012.JPEG").write_bytes(b"")
    status, out, err = run_tool(preprocess_tool, [source, tmp_path / "bins"])
    assert status == 1
    assert "3 written" in out and "3 failed" in out
    for name, reason in (("00000010", "not an image"), ("00000011", "cannot decode"), ("00000012", "")):
        assert f"failed: ILSVRC2012_val_{name}.JPEG" in err
        assert reason in err
    written = sorted(p.name for p in (tmp_path / "bins").iterdir())
    assert written == [".preprocess_settings.json"] + [f"ILSVRC2012_val_0000000{i}.bin" for i in (1, 2, 3)]
    # no temporaries, no partials: the settings record and the good files


def test_resume_skips_finished_files_and_redoes_broken_ones(val_folder, tmp_path):
    target = tmp_path / "bins"
    preprocess.preprocess_folder(val_folder, target, jobs=2)
    victim = target / "ILSVRC2012_val_00000002.bin"
    expected = victim.read_bytes()
    victim.write_bytes(expected[:1000])  # e.g. cut short by a crash before atomic writes existed
    (target / ".ILSVRC2012_val_00000003.bin.abc.tmp").write_bytes(b"partial")
    calls = []
    report = preprocess.preprocess_folder(val_folder, target, jobs=2, resume=True, progress=calls.append)
    assert (report.written, report.skipped, report.failed) == (1, len(IMAGE_SPECS) - 1, [])
    assert sum(calls) == len(IMAGE_SPECS)
    assert victim.read_bytes() == expected
    assert not list(target.glob(".*.tmp"))


def test_resume_refuses_bins_written_with_other_settings_and_a_new_run_rewrites_them(val_folder, tmp_path):
    target = tmp_path / "bins"
    status, _, err = run_tool(preprocess_tool, [val_folder, target, "--resize", 256, "--crop", 224])
    assert status == 0, err
    old = {p.name: p.read_bytes() for p in target.glob("*.bin")}
    # same crop (same file size), other resize: size checks alone would keep every stale file
    status, out, err = run_tool(preprocess_tool, [val_folder, target, "--resize", 288, "--crop", 224, "--resume"])
    assert status == 1 and out == ""
    assert err == (f"preprocess_se_resnext50_32x4d_pth.py: error: {target}: its .bin files were written with --crop "
                   f"224 --resize 256, this run asks for --crop 224 --resize 288; run without --resume to write them "
                   f"all again, or choose another folder\n")
    assert {p.name: p.read_bytes() for p in target.glob("*.bin")} == old
    status, out, err = run_tool(preprocess_tool, [val_folder, target, "--resize", 288, "--crop", 224])
    assert status == 0 and f"{len(IMAGE_SPECS)} written" in out
    status, out, err = run_tool(preprocess_tool, [val_folder, target, "--resize", 288, "--crop", 224, "--resume"])
    assert status == 0 and f"0 written, {len(IMAGE_SPECS)} skipped" in out
    redone = {p.name: p.read_bytes() for p in target.glob("*.bin")}
    assert redone.keys() == old.keys() and all(redone[name] != old[name] for name in old)
    # files from before settings were recorded: --resume cannot vouch for them
    (target / ".preprocess_settings.json").unlink()
    status, _, err = run_tool(preprocess_tool, [val_folder, target, "--resize", 288, "--crop", 224, "--resume"])
    assert status == 1 and "--resume cannot tell which settings wrote its .bin files" in err


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    status, _, err = run_tool(preprocess_tool, [tmp_path / "nope", tmp_path / "bins"])
    assert status == 1 and "nope: no such folder" in err
    (tmp_path / "empty").mkdir()
    status, _, err = run_tool(preprocess_tool, [tmp_path / "empty", tmp_path / "bins"])
    assert status == 1 and "empty: the folder is empty" in err


def test_names_that_collide_up_to_the_first_dot_are_reported(tmp_path):
    write_image(tmp_path / "val" / "a.JPEG", 300, 300)
    write_image(tmp_path / "val" / "a.png", 300, 300, fmt="PNG")
    report = preprocess.preprocess_folder(tmp_path / "val", tmp_path / "bins", jobs=1)
    assert report.written == 1
    assert [name for name, _ in report.failed] == ["a.png"]
    assert "already produced by a.JPEG" in report.failed[0][1]


def test_fast_path_matches_reference_on_odd_sizes(tmp_path):
    for index, (width, height) in enumerate([(257, 999), (999, 257), (224, 224), (511, 512)]):
        path = write_image(tmp_path / f"{index}.jpg", width, height, seed=index)
        assert preprocess.preprocess_image(path).tobytes() == upstream_preprocess_bytes(path)
    assert preprocess.preprocess_image(path).dtype == np.float32


def test_other_sizes_follow_the_same_algorithm(val_folder, tmp_path):
    """--resize/--crop serve models trained at other sizes (the sample run uses 72/64)."""
    status, out, err = run_tool(preprocess_tool, [val_folder, tmp_path / "bins", "--resize", "72", "--crop", "64"])
    assert status == 0, err
    source = sorted(val_folder.iterdir())[0]
    produced = np.fromfile(tmp_path / "bins" / (source.name.split(".")[0] + ".bin"), dtype=np.float32)
    assert produced.size == 3 * 64 * 64
    assert np.array_equal(produced.reshape(3, 64, 64), preprocess.preprocess_image(source, resize=72, crop=64))
    status, _, err = run_tool(preprocess_tool, [val_folder, tmp_path / "x", "--resize", "60", "--crop", "64"])
    assert status != 0 and "--crop 64" in err
