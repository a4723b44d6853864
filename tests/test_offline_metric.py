"""vision_metric_ImageNet.py: upstream's result.json byte for byte, and clear errors."""
import json

import numpy as np
import pytest

import vision_metric_ImageNet as metric_tool
from offline_helpers import run_tool
from seresnext.output_formats import write_dump


def _dump(folder, name, ranking, classes=1000, binary=False):
    """A dump whose highest values are the classes in ``ranking``, in that order."""
    logits = np.linspace(-1, 0, classes, dtype=np.float32)
    for position, cls in enumerate(ranking):
        logits[cls] = 10.0 - position
    write_dump(folder, name, logits, binary)


def _labels(path, labels):
    path.write_text("".join(f"{name}.JPEG {label}\n" for name, label in labels.items()))
    return path


def _upstream_result(dump_dir, labels, topn=5):
    """upstream's newest create_visualization_statistical_result, condensed (reference for the byte check):
    it skips files that are not .txt and takes the image name up to the last underscore."""
    count, count_hit, res_cnt, n_labels = 0, np.zeros(topn), 0, 0
    for path in sorted(dump_dir.iterdir()):
        if not path.name.endswith(".txt"):
            continue
        count += 1
        prediction = np.array(path.read_text().strip().split(" "), dtype=np.float32)
        n_labels = len(prediction)
        sort_index = np.argsort(-prediction)
        real = int(labels[path.name.split(".")[0].rsplit("_", 1)[0]]) + (1 if n_labels == 1001 else 0)
        res_cnt = min(len(sort_index), topn)
        for i in range(res_cnt):
            if str(real) == str(sort_index[i]):
                count_hit[i] += 1
                break
    table = {"title": "Overall statistical evaluation", "value": [
        {"key": "Number of images", "value": str(count)}, {"key": "Number of classes", "value": str(n_labels)}]}
    accuracy = np.cumsum(count_hit) / count
    for i in range(res_cnt):
        table["value"].append({"key": "Top" + str(i + 1) + " accuracy",
                               "value": str(round(accuracy[i] * 100, 2)) + '%'})
    return json.dumps(table)


def test_hand_made_case_gives_upstreams_exact_bytes(tmp_path):
    dumps = tmp_path / "dumpOutput_device0"
    dumps.mkdir()
    # image: (ranking of the model, true label) -> hit at rank 1, 2, 3, miss, 1, 5
    cases = {"ILSVRC2012_val_00000001": ([7, 1], 7), "ILSVRC2012_val_00000002": ([3, 9], 9),
             "ILSVRC2012_val_00000003": ([5, 6, 4], 4), "ILSVRC2012_val_00000004": ([1, 2, 3, 4, 5], 999),
             "ILSVRC2012_val_00000005": ([0], 0), "ILSVRC2012_val_00000006": ([10, 11, 12, 13, 14], 14)}
    for name, (ranking, _) in cases.items():
        _dump(dumps, name, ranking)
    labels = _labels(tmp_path / "val_label.txt", {name: label for name, (_, label) in cases.items()})
    status, out, err = run_tool(metric_tool, [dumps, labels, tmp_path / "out", "result.json"])
    assert status == 0, err
    expected = ('{"title": "Overall statistical evaluation", "value": [{"key": "Number of images", "value": "6"}, '
                '{"key": "Number of classes", "value": "1000"}, {"key": "Top1 accuracy", "value": "33.33%"}, '
                '{"key": "Top2 accuracy", "value": "50.0%"}, {"key": "Top3 accuracy", "value": "66.67%"}, '
                '{"key": "Top4 accuracy", "value": "66.67%"}, {"key": "Top5 accuracy", "value": "83.33%"}]}')
    written = (tmp_path / "out" / "result.json").read_text()
    assert written == expected
    assert written == _upstream_result(dumps, {n: label for n, (_, label) in cases.items()})
    assert "| Top1 accuracy     | 33.33% |" in out and "| Number of images  |      6 |" in out


def test_1001_outputs_shift_the_label_and_few_classes_limit_topk(tmp_path):
    dumps = tmp_path / "d"
    dumps.mkdir()
    _dump(dumps, "a", [8], classes=1001)  # background first: class 7 is output 8
    _dump(dumps, "b", [3], classes=1001)
    _labels(tmp_path / "v.txt", {"a": 7, "b": 7})
    status, _, err = run_tool(metric_tool, [dumps, tmp_path / "v.txt", tmp_path, "r.json"])
    assert status == 0, err
    values = {v["key"]: v["value"] for v in json.loads((tmp_path / "r.json").read_text())["value"]}
    assert values["Number of classes"] == "1001" and values["Top1 accuracy"] == "50.0%"
    small = tmp_path / "small"
    small.mkdir()
    _dump(small, "a", [2, 1, 0], classes=3, binary=True)
    _labels(tmp_path / "v3.txt", {"a": 0})
    status, _, err = run_tool(metric_tool, [small, tmp_path / "v3.txt", tmp_path, "r3.json"])
    assert status == 0, err
    keys = [v["key"] for v in json.loads((tmp_path / "r3.json").read_text())["value"]]
    assert keys == ["Number of images", "Number of classes", "Top1 accuracy", "Top2 accuracy", "Top3 accuracy"]


def test_dump_without_label_is_an_error(tmp_path):
    (tmp_path / "d").mkdir()
    _dump(tmp_path / "d", "ILSVRC2012_val_00000001", [1])
    _dump(tmp_path / "d", "ILSVRC2012_val_00000009", [1])
    _labels(tmp_path / "v.txt", {"ILSVRC2012_val_00000001": 1})
    status, _, err = run_tool(metric_tool, [tmp_path / "d", tmp_path / "v.txt", tmp_path, "r.json"])
    assert status == 1
    assert "1 dump(s) in" in err and "have no label in" in err and "ILSVRC2012_val_00000009" in err
    assert not (tmp_path / "r.json").exists()


def test_labels_without_dumps_are_scored_without_them_with_a_warning_unless_strict(tmp_path):
    dumps = tmp_path / "d"
    dumps.mkdir()
    _dump(dumps, "ILSVRC2012_val_00000001", [1])
    _dump(dumps, "ILSVRC2012_val_00000002", [3, 2])
    labels = {"ILSVRC2012_val_00000001": 1, "ILSVRC2012_val_00000002": 2, "ILSVRC2012_val_00000003": 5,
              "ILSVRC2012_val_00000004": 6}  # the official file lists more images than were run
    _labels(tmp_path / "v.txt", labels)
    status, _, err = run_tool(metric_tool, [dumps, tmp_path / "v.txt", tmp_path / "out", "result.json"])
    assert status == 0, err
    assert (f"warning: 2 of the 4 images labelled in {tmp_path / 'v.txt'} have no dump in {dumps}; scored the 2 "
            f"that have one (--strict makes this an error)") in err
    written = (tmp_path / "out" / "result.json").read_text()
    assert written == _upstream_result(dumps, labels)  # upstream scored what it found, too
    assert '"Number of images", "value": "2"' in written and '"Top1 accuracy", "value": "50.0%"' in written

    status, _, err = run_tool(metric_tool, [dumps, tmp_path / "v.txt", tmp_path, "strict.json", "--strict"])
    assert status == 1 and "--strict: 2 image(s) labelled in" in err and "ILSVRC2012_val_00000003" in err
    assert not (tmp_path / "strict.json").exists()

    # the flag that used to allow this still works, says it is the default now, and changes nothing
    status, _, err = run_tool(metric_tool, [dumps, tmp_path / "v.txt", tmp_path / "old", "result.json",
                                            "--allow-missing-dumps"])
    assert status == 0 and "note: --allow-missing-dumps is the default now" in err
    assert (tmp_path / "old" / "result.json").read_text() == written


def _ais_bench_txt(path, values):
    """ais_bench's TXT writer (save_data_to_files): ``%f`` values, each followed by a space, then a newline."""
    with open(path, "wb") as f:
        np.savetxt(f, np.c_[values], fmt="%f", newline=" ")
        f.write(b"\n")


def test_ais_bench_dumps_of_output_0_are_scored_and_other_files_skipped(tmp_path):
    out = tmp_path / "ais_out"
    run = out / "2024_01_02-03_04_05"
    run.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = {}
    for i in range(1, 8):
        name = f"ILSVRC2012_val_{i:08d}"
        logits = rng.standard_normal(1000).astype(np.float32)
        labels[name] = int(np.argsort(-logits)[i % 4])  # hit at rank 2, 3, 4, 1, 2, 3, 4
        _ais_bench_txt(run / f"{name}_0.txt", logits)
    (run / "notes.json").write_text("{}")  # not a dump
    (out / "2024_01_02-03_04_05_summary.json").write_text('{"throughput": 1.0}')
    _labels(tmp_path / "v.txt", labels)
    status, _, err = run_tool(metric_tool, [run, tmp_path / "v.txt", tmp_path, "result.json"])
    assert status == 0, err
    assert "note: skipped 1 file(s)" in err and "notes.json" in err
    written = (tmp_path / "result.json").read_text()
    assert written == _upstream_result(run, labels)  # upstream's newest script on the same folder
    assert '"Number of images", "value": "7"' in written and '"Top1 accuracy", "value": "14.29%"' in written


@pytest.mark.parametrize("kind", ["bin", "npy", "msame"])
def test_binary_npy_and_msame_dumps_are_read_whole(tmp_path, kind):
    dumps = tmp_path / "d"
    dumps.mkdir()
    logits = np.linspace(-1, 1, 1000, dtype=np.float32)[::-1].copy()  # class 0 highest
    logits[[7, 8]] = logits[[8, 7]]
    if kind == "msame":  # <name>_output_0.txt, a line break every 100 values
        text = "\n".join(" ".join(f"{v:.6f}" for v in logits[i:i + 100]) for i in range(0, 1000, 100)) + "\n"
        (dumps / "img_output_0.txt").write_text(text)
    else:
        write_dump(dumps, "img", logits, binary=kind == "bin", suffix="_0", ext=kind)
    _labels(tmp_path / "v.txt", {"img": 999})  # the lowest value: only found when every value was read
    status, _, err = run_tool(metric_tool, [dumps, tmp_path / "v.txt", tmp_path, "r.json"])
    assert status == 0, err
    values = {v["key"]: v["value"] for v in json.loads((tmp_path / "r.json").read_text())["value"]}
    assert values["Number of classes"] == "1000" and values["Top5 accuracy"] == "0.0%"


def test_dotted_image_names_keep_their_dots(tmp_path):
    dumps = tmp_path / "d"
    dumps.mkdir()
    _dump(dumps, "holiday.2019.beach", [4])  # holiday.2019.beach_1.txt
    _dump(dumps, "ILSVRC2012_val_00000001.JPEG", [2])  # a dump named after the JPEG's full file name
    (tmp_path / "v.txt").write_text("holiday.2019.beach.JPEG 4\nILSVRC2012_val_00000001.JPEG 2\n")
    status, out, err = run_tool(metric_tool, [dumps, tmp_path / "v.txt", tmp_path, "r.json"])
    assert status == 0, err
    assert '"Number of images", "value": "2"' in (tmp_path / "r.json").read_text()
    assert '"Top1 accuracy", "value": "100.0%"' in (tmp_path / "r.json").read_text()


def test_an_images_first_output_is_scored_and_two_dumps_of_one_output_are_an_error(tmp_path):
    dumps = tmp_path / "d"
    dumps.mkdir()
    _dump(dumps, "a_0", [3])  # not a name: a_0_1.txt is image a_0
    write_dump(dumps, "b", np.eye(1, 10, 3, dtype=np.float32)[0], binary=False, suffix="_0")
    write_dump(dumps, "b", np.eye(1, 10, 5, dtype=np.float32)[0], binary=False, suffix="_1")  # a second output
    _labels(tmp_path / "v.txt", {"a_0": 3, "b": 3})
    status, _, err = run_tool(metric_tool, [dumps, tmp_path / "v.txt", tmp_path, "r.json"])
    assert status == 1 and "values, but other dumps have" in err  # a_0 (1000 values) and b (10) both read
    (dumps / "a_0_1.txt").unlink()
    status, _, err = run_tool(metric_tool, [dumps, tmp_path / "v.txt", tmp_path, "r.json"])
    assert status == 0 and "skipped 1 dump(s) of later outputs (e.g. b_1.txt)" in err
    assert '"Top1 accuracy", "value": "100.0%"' in (tmp_path / "r.json").read_text()
    write_dump(dumps, "b", np.zeros(10, np.float32), binary=True, suffix="_0")
    status, _, err = run_tool(metric_tool, [dumps, tmp_path / "v.txt", tmp_path, "r.json"])
    assert status == 1 and "two dumps for image 'b': b_0.bin and b_0.txt" in err


def test_one_based_labels_are_named_in_the_warning(tmp_path):
    dumps = tmp_path / "d"
    dumps.mkdir()
    for i, cls in enumerate((0, 1, 2)):
        _dump(dumps, f"x{i}", [cls], classes=3)
    _labels(tmp_path / "v.txt", {"x0": 1, "x1": 2, "x2": 3})  # 1-based: every label one too high
    status, _, err = run_tool(metric_tool, [dumps, tmp_path / "v.txt", tmp_path, "r.json"])
    assert status == 0
    assert "warning: 1 label(s) are not below the 3 model outputs (counted as misses): labels run 1..3: is" in err
    assert "1-based? They must be 0-based" in err


@pytest.mark.parametrize("case, message", [
    ("no_dump_dir", "nope: no such folder"),
    ("no_labels", "missing.txt: no such label file"),
    ("empty_dump_dir", "no dump files"),
    ("mixed_lengths", "values, but other dumps have"),
    ("bad_value", "is not a number"),
])
def test_bad_metric_inputs_are_clear_errors(tmp_path, case, message):
    dumps = tmp_path / "d"
    dumps.mkdir()
    labels = _labels(tmp_path / "v.txt", {"a": 0, "b": 0})
    if case == "no_dump_dir":
        dumps = tmp_path / "nope"
    elif case == "no_labels":
        _dump(dumps, "a", [0])
        labels = tmp_path / "missing.txt"
    elif case == "mixed_lengths":
        _dump(dumps, "a", [0], classes=1000)
        _dump(dumps, "b", [0], classes=10)
    elif case == "bad_value":
        _dump(dumps, "a", [0])
        (dumps / "b_1.txt").write_text("1.0 2.0 oops\n")
    status, _, err = run_tool(metric_tool, [dumps, labels, tmp_path, "r.json"])
    assert status == 1 and message in err, err
