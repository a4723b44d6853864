"""The main job's training progress: one line per finished epoch of main.py's train_log.jsonl, with the time left."""
import json
import signal
import threading
import time

import pytest

from seresnext.progressive_sizes import parse_progressive_sizes, train_size_at
from seresnext.train_progress import EpochProgress, progress_line, seconds_left
from seresnext.training_log import append_record


def sizes(text, image_size=64):
    phases = parse_progressive_sizes(text, image_size)
    return lambda epoch: train_size_at(epoch, image_size, phases)


def record(epoch, size, seconds, val=None):
    return {"epoch": epoch, "image_size": size, "seconds": seconds, "images_per_second": 1000 / seconds,
            "train_loss": 2.0 - epoch / 10, "val_top1": val}


def test_time_left_uses_each_sizes_median_and_scales_a_size_not_run_yet_by_its_side():
    size_at = sizes("48:3")  # epochs 0-2 at 48 px, 3-5 at 64 px
    done = [record(0, 48, 14.0), record(1, 48, 9.0), record(2, 48, 9.0)]
    assert seconds_left(done[:2], 6, size_at) == pytest.approx(11.5 + 3 * 11.5 * 64 / 48)  # 64 px: not run yet
    assert seconds_left(done, 6, size_at) == pytest.approx(3 * 9.0 * 64 / 48)
    assert seconds_left(done + [record(3, 64, 20.0)], 6, size_at) == 2 * 20.0  # measured: no scaling
    assert seconds_left(done + [record(e, 64, 20.0) for e in (3, 4, 5)], 6, size_at) == 0
    assert seconds_left([], 6, size_at) is None


def test_the_line_names_the_epoch_its_size_speed_loss_validation_and_the_time_left():
    assert (progress_line(record(3, 64, 50.0, val=71.5), 25, 19 * 60)
            == "train: epoch 4/25: 64 px, 50 s, 20.0 images/s, loss 1.700, val top-1 71.5; "
               "about 19 min left at this speed")
    assert progress_line(record(0, 48, 40.0), 25, 75.0).endswith("loss 2.000; about 75 s left at this speed")
    assert "left" not in progress_line(record(24, 64, 50.0), 25, 0.0)


def test_it_follows_the_log_as_main_py_appends_and_skips_an_earlier_runs_records(tmp_path):
    log = tmp_path / "train_log.jsonl"
    append_record(log, record(0, 64, 30.0))  # an interrupted run's epoch: a resumed run keeps it
    lines = []

    def main_py():
        for epoch in (1, 2):
            time.sleep(0.05)
            append_record(log, record(epoch, 64, 10.0, val=50.0 if epoch == 2 else None))
        with log.open("a") as f:
            f.write('{"epoch": 3, "image_si')  # a torn line: the record is being written

    with EpochProgress(log, 4, sizes(None), lines.append, poll=0.01):
        writer = threading.Thread(target=main_py)
        writer.start()
        writer.join()
    assert lines == ["train: epoch 2/4: 64 px, 10 s, 100.0 images/s, loss 1.900; about 20 s left at this speed",
                     "train: epoch 3/4: 64 px, 10 s, 100.0 images/s, loss 1.800, val top-1 50.0; "
                     "about 10 s left at this speed"]
    assert json.loads(log.read_text().splitlines()[0])["seconds"] == 30.0  # only read, never written


def test_a_new_run_over_an_old_log_reports_its_own_epochs(tmp_path):
    log = tmp_path / "train_log.jsonl"
    append_record(log, record(0, 64, 30.0))
    lines = []
    with EpochProgress(log, 2, sizes(None), lines.append, poll=0.01):
        log.write_text(json.dumps(record(0, 64, 12.0)) + "\n")  # --overwrite: main.py starts the log again
    assert lines == ["train: epoch 1/2: 64 px, 12 s, 83.3 images/s, loss 2.000; about 12 s left at this speed"]


def test_ctrl_c_reaches_the_main_thread_not_the_follower(tmp_path):
    # A process-directed SIGINT goes to any thread that does not block it; taken by the follower, it would not
    # interrupt the main thread's read of the stage's output, and the job would not stop with one line.
    log = tmp_path / "train_log.jsonl"
    masks = []
    with EpochProgress(log, 2, sizes(None), lambda line: masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
                       poll=0.01):
        append_record(log, record(0, 64, 12.0))
        time.sleep(0.1)
    assert masks and {signal.SIGINT, signal.SIGTERM} <= masks[0]
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the main thread's mask is untouched
