"""vision_metric_ImageNet.py: upstream's result.json byte for byte, and clear errors."""
import json

import numpy as np
import pytest

import vision_metric_ImageNet as metric_tool
from offline_helpers import run_tool
from seresnext.formats import write_dump


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
    """upstream's create_visualization_statistical_result, condensed (reference for the byte check)."""
    count, count_hit, res_cnt, n_labels = 0, np.zeros(topn), 0, 0
    for path in sorted(dump_dir.iterdir()):
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


def test_labels_without_dumps_are_an_error_unless_allowed(tmp_path):
    (tmp_path / "d").mkdir()
    _dump(tmp_path / "d", "a", [1])
    _labels(tmp_path / "v.txt", {"a": 1, "b": 2})
    status, _, err = run_tool(metric_tool, [tmp_path / "d", tmp_path / "v.txt", tmp_path, "r.json"])
    assert status == 1 and "1 image(s) labelled in" in err and "have no dump" in err and ": b" in err
    status, _, err = run_tool(metric_tool, [tmp_path / "d", tmp_path / "v.txt", tmp_path, "r.json",
                                            "--allow-missing-dumps"])
    assert status == 0 and "1 labelled images have no dump" in err
    assert '"Top1 accuracy", "value": "100.0%"' in (tmp_path / "r.json").read_text()


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
