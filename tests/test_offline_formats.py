"""The chain's file formats: exact layouts, and errors that name the file and line."""
import numpy as np
import pytest

from seresnext import formats, output_formats
from seresnext.formats import FormatError
from seresnext.output_formats import PerfStats


def test_bin_of_the_wrong_size_names_file_and_sizes(tmp_path):
    path = tmp_path / "x.bin"
    formats.write_bin(path, np.ones((3, 4, 5), np.float32))
    assert path.stat().st_size == 240
    assert formats.read_bin(path, (3, 4, 5)).sum() == 60
    with pytest.raises(FormatError, match=r"x\.bin: 240 bytes, expected 602112 \(float32 3x224x224\)"):
        formats.read_bin(path, (3, 224, 224))


@pytest.mark.parametrize("text, message", [
    ("0 a.bin 224 224\n1 b.bin 224\n", r"x\.info:2: expected 'index path width height'"),
    ("0 a.bin 224 224\nx b.bin 224 224\n", r"x\.info:2: index, width and height must be integers"),
    ("0 a.bin 0 224\n", r"x\.info:1: width and height must be positive"),
    ("\n\n", r"x\.info: the \.info file lists no files"),
])
def test_malformed_info_names_the_line(tmp_path, text, message):
    (tmp_path / "x.info").write_text(text)
    with pytest.raises(FormatError, match=message):
        formats.read_info(tmp_path / "x.info")


def test_info_round_trip_and_image_names(tmp_path):
    formats.write_info(tmp_path / "a.info", [("./prep/ILSVRC2012_val_00000001.bin", 224, 224),
                                             ("./val/ILSVRC2012_val_00000002.JPEG", 500, 375)])
    entries = formats.read_info(tmp_path / "a.info")
    assert [(e.index, e.image_name, e.width, e.height, e.line) for e in entries] == [
        (0, "ILSVRC2012_val_00000001", 224, 224, 1), (1, "ILSVRC2012_val_00000002", 500, 375, 2)]


@pytest.mark.parametrize("text, message", [
    ("a.JPEG 1\nb.JPEG\n", r"v\.txt:2: expected 'image_file label'"),
    ("a.JPEG one\n", r"v\.txt:1: label 'one' is not an integer"),
    ("a.JPEG 1\na.JPEG 2\n", r"v\.txt:2: image 'a' is already labelled on line 1"),
    ("a.JPEG -1\n", r"v\.txt:1: label -1 is negative"),
])
def test_malformed_val_label_names_the_line(tmp_path, text, message):
    (tmp_path / "v.txt").write_text(text)
    with pytest.raises(FormatError, match=message):
        formats.read_val_label(tmp_path / "v.txt")


@pytest.mark.parametrize("binary", [False, True])
def test_dumps_round_trip_float32_exactly(tmp_path, binary):
    values = np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 10
    path = output_formats.write_dump(tmp_path, "ILSVRC2012_val_00000001", values, binary)
    assert path.name == "ILSVRC2012_val_00000001_1." + ("bin" if binary else "txt")
    np.testing.assert_array_equal(output_formats.read_dump(path), values)
    if not binary:
        assert path.read_text().count("\n") == 1 and len(path.read_text().split()) == 1000
    assert output_formats.image_name_of_dump(path.name) == "ILSVRC2012_val_00000001"


def test_perf_file_has_upstreams_five_lines(tmp_path):
    stats = PerfStats(e2e_rate=170.628, e2e_latency_ms=293035, read_ms_per_image=5.50749,
                      preprocess_ms_per_image=5.5412, infer_stage_rate=171.595, interface_rate=247.898,
                      infer_ms_per_batch=5.12562, post_ms_per_image=5.82768)
    path = tmp_path / output_formats.perf_file_name(16, 0)
    assert path.name == "perf_vision_batchsize_16_device_0.txt"
    text = output_formats.write_perf_file(path, stats)
    assert text == ("[e2e] throughputRate: 170.628, latency: 293035\n"
                    "[data read] throughputRate: 181.571, moduleLatency: 5.50749\n"
                    "[preprocess] throughputRate: 180.466, moduleLatency: 5.5412\n"
                    "[infer] throughputRate: 171.595, Interface throughputRate: 247.898, moduleLatency: 5.12562\n"
                    "[post] throughputRate: 171.595, moduleLatency: 5.82768\n")
    parsed = output_formats.read_perf_file(path)
    assert parsed["infer"]["Interface throughputRate"] == 247.898 and parsed["e2e"]["latency"] == 293035


def test_atomic_write_leaves_no_temporaries_and_normal_permissions(tmp_path):
    formats.atomic_write(tmp_path / "f.txt", "hello")
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    assert (tmp_path / "f.txt").stat().st_mode & 0o644 == 0o644


def test_atomic_write_that_fails_keeps_the_old_file(tmp_path):
    formats.atomic_write(tmp_path / "f.txt", "old")
    with pytest.raises(TypeError):
        formats.atomic_write(tmp_path / "f.txt", 12345)  # not bytes: fails while writing
    assert (tmp_path / "f.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


@pytest.mark.parametrize("file_name, image, output, ext", [
    ("ILSVRC2012_val_00000001_1.txt", "ILSVRC2012_val_00000001", 1, "txt"),  # benchmark.x86_64
    ("ILSVRC2012_val_00000001_0.bin", "ILSVRC2012_val_00000001", 0, "bin"),  # ais_bench
    ("ILSVRC2012_val_00000001_0.npy", "ILSVRC2012_val_00000001", 0, "npy"),
    ("ILSVRC2012_val_00000001_output_0.txt", "ILSVRC2012_val_00000001", 0, "txt"),  # msame
    ("ILSVRC2012_val_00000001.JPEG_1.txt", "ILSVRC2012_val_00000001", 1, "txt"),  # named after the JPEG
    ("holiday.2019.beach_1.txt", "holiday.2019.beach", 1, "txt"),
    ("a_b_c_12.txt", "a_b_c", 12, "txt"),
    ("2024_01_02-03_04_05_summary.json", None, None, None),
    ("notes.txt", None, None, None),
])
def test_dump_names_lose_only_their_output_suffix_and_an_image_extension(file_name, image, output, ext):
    parsed = output_formats.parse_dump_name(file_name)
    if image is None:
        assert parsed is None and output_formats.image_name_of_dump(file_name) is None
    else:
        assert (parsed.image, parsed.output, parsed.ext) == (image, output, ext)


@pytest.mark.parametrize("file_name, stem", [
    ("ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000001"), ("x.jpg", "x"), ("x.bin", "x"),
    ("holiday.2019.beach.JPEG", "holiday.2019.beach"), ("holiday.2019.beach", "holiday.2019.beach"),
    ("dir/a.b.png", "a.b"), ("noext", "noext"),
])
def test_image_names_keep_every_dot_but_the_extensions(file_name, stem):
    assert formats.image_stem(file_name) == stem
    assert formats.bin_file_name(file_name) == stem + ".bin"
    assert formats.InfoEntry(0, f"./val/{file_name}", 1, 1).image_name == stem  # what the runner names dumps after


@pytest.mark.parametrize("ext", ["txt", "bin", "npy"])
def test_a_dump_is_complete_only_with_all_its_values(tmp_path, ext):
    values = np.linspace(-3, 3, 1000, dtype=np.float32)
    path = output_formats.write_dump(tmp_path, "ILSVRC2012_val_00000001", values, binary=False, ext=ext)
    assert output_formats.dump_is_complete(path, 1000) and not output_formats.dump_is_complete(path, 1001)
    data = path.read_bytes()
    for cut in (b"", data[:len(data) // 2], data[:-1]):  # what a power loss can leave under the final name
        path.write_bytes(cut)
        assert not output_formats.dump_is_complete(path, 1000), cut[-20:]
    assert not output_formats.dump_is_complete(tmp_path / "missing_1.txt", 1000)


def test_remove_temporaries_deletes_only_the_leftovers_of_the_names_asked_for(tmp_path):
    for name in (".a_1.txt.k1ll3d_x.tmp", ".model.onnx.abcd1234.tmp", "a_1.txt", ".hidden", "b.tmp"):
        (tmp_path / name).write_text("x")
    removed = formats.remove_temporaries(tmp_path, lambda name: output_formats.parse_dump_name(name) is not None)
    assert [p.name for p in removed] == [".a_1.txt.k1ll3d_x.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", ".model.onnx.abcd1234.tmp", "a_1.txt", "b.tmp"]
