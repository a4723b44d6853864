"""The main job in one command: sample data, training, export, the offline chain in both modes, summary.

Every stage runs the same command a user would type from the README (``test/train_full_1p.sh``,
``seresnext50_pth2onnx.py``, ``preprocess_se_resnext50_32x4d_pth.py``, ``get_info.py``,
``se_resnext50_32x4d_atc.sh``, ``benchmark.py``, ``vision_metric_ImageNet.py``), so the job is a check that
the documented chain works.

A stage that finished leaves a stamp in ``<work>/.done/`` recording what it depended on (data path, recipe,
flags, and the size and time of its input files). Running the job again reuses a stage whose inputs are
unchanged; a changed input redoes that stage and every stage after it, and one line says why. ``--force``
redoes everything, ``--from STAGE`` redoes from a stage on.

On real data (``--data_path``), the first stage prepares what the offline chain needs: ``val_flat/`` (links
to ``val/<wnid>/*``, made under the work folder when the dataset has none) and ``val_label.txt`` (0-based,
sorted-WNID order, built from ``val/<wnid>/``; a ``val_label.txt`` in the dataset is checked against it).

Ctrl-C stops the job with one line; the training stage of the next run continues from the checkpoint the
interrupted one saved.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .formats import FormatError, image_stem, read_val_label, write_val_label
from .imagenet import LabelError, diagnose_val_labels, labels_from_class_folders
from .output_formats import perf_file_name, read_perf_file, read_result_json
from .pipeline_job import ROOT, Job, StageError, fingerprint, run, say, why_redo, write_stamp
from .progressive_sizes import parse_progressive_sizes, train_size_at
from .train_progress import EpochProgress
from .training_log import LOG_NAME

STAGES = ("data", "train", "export", "preprocess", "info", "build", "run_bin", "run_jpg", "metric")

# The sample recipe, at low resolution so that 2 CPU cores train it in minutes (real ImageNet runs upstream's):
# AdamW, larger random crops, 25 epochs trained at 48 px (the first 8) then 56 px, one validation at the end.
# The model is validated and deployed at 64 px on the whole image (val resize 64, no centre crop): the random
# crops (area 0.35-1) show objects about 1.2x larger than the whole image does, so 56 px crops match the scale
# of a 64 px whole image, and keeping the image's sides pays for what the smaller training size saves.
# The recipes tried and measured: docs/training.md.
SAMPLE_TRAIN = {"image_size": 64, "val_resize": 64, "epochs": 25, "batch_size": 32, "lr": 0.004,
                "extra": ["--optimizer=adamw", "--wd=0.05", "--min-crop-scale=0.35", "--max-crop-aspect=1.67",
                          "--warmup-epochs=1", "--seed=0", "--label-smoothing=0.1", "--channels-last",
                          "--progressive-sizes=48:8,56:17", "--eval-freq=25"]}
# Real data runs upstream's launch wrappers with their recipes (written out here so the stamp records them):
# 1p is test/train_full_1p.sh, upstream's 1-epoch check on one device; 8p is test/train_full_8p.sh, upstream's
# full recipe on up to 8 devices (one process each). Both at 224 px with AMP (O2, loss scale 16).
REAL_TRAIN = {
    "1p": {"script": "test/train_full_1p.sh", "image_size": 224, "val_resize": 256, "epochs": 1,
           "batch_size": 256, "lr": 0.1, "extra": []},
    "8p": {"script": "test/train_full_8p.sh", "image_size": 224, "val_resize": 256, "epochs": 100,
           "batch_size": 1024, "lr": 0.4, "extra": []},
}
TRAIN_SCRIPT = "test/train_full_1p.sh"  # the sample recipe's wrapper


def stage_data(job: Job) -> None:
    if job.sample:
        run("data", [job.python, "-m", "seresnext.sample_data", "--out", job.data, "--overwrite"],
            job.path("logs", "data.log"), job.python)
    prepare_offline_data(job)


def prepare_offline_data(job: Job) -> None:
    """``val_flat/`` and ``val_label.txt`` for the offline chain, from ``val/<wnid>/``; say what was done."""
    for split in ("train", "val"):
        if not (job.data / split).is_dir():
            raise StageError(f"--data_path {job.data}: no {split}/ folder (expected ImageNet in ImageFolder "
                             f"layout: train/<wnid>/, val/<wnid>/)")
    try:
        classes, rows = labels_from_class_folders(job.data / "val")
    except LabelError as exc:
        raise StageError(str(exc)) from None
    truth = {image_stem(name): label for name, label in rows}
    made = job.path("val_flat")
    if made.is_dir() and not made.is_symlink():
        shutil.rmtree(made)
    elif made.is_symlink() or made.exists():
        made.unlink()
    own = job.data / "val_flat"
    if own.is_dir() and sorted(e.name for e in os.scandir(own) if not e.name.startswith(".")) == \
            sorted(name for name, _ in rows):
        say(f"data: using {own} ({len(rows)} images, the same as val/<wnid>/)")
    else:
        if own.is_dir():
            say(f"data: {own} does not hold the images of val/<wnid>/; linking them into {made} instead")
        building = job.path(".val_flat.tmp")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        for name, label in rows:
            (building / name).symlink_to(job.data / "val" / classes[label] / name)
        building.rename(made)
        say(f"data: linked the {len(rows)} val images into {made}")
    write_val_label(job.labels, rows)
    given = job.data / "val_label.txt"
    if not given.is_file():
        say(f"data: wrote {job.labels} from val/<wnid>/ ({len(rows)} images, {len(classes)} classes, 0-based)")
        return
    try:
        problem = diagnose_val_labels(read_val_label(given), truth)
    except FormatError as exc:
        problem = f"cannot be read ({exc})"
    if problem is None:
        say(f"data: {given} agrees with val/<wnid>/; the chain uses the same labels in {job.labels}")
    else:
        say(f"data: warning: {given} {problem}; it would score near chance, so the chain uses {job.labels}, "
            f"built from val/<wnid>/ (as make_val_label.py folder does)")


def interrupted_training(folder: Path, epochs: int | None) -> str | None:
    """Where the main.py run that saved ``folder/checkpoint.pth.tar`` stopped (``"epoch E, step S"``), when it
    stopped before the end of its ``epochs`` (None: this recipe's, whatever they are); None otherwise."""
    path = folder / "checkpoint.pth.tar"
    if not path.is_file():
        return None
    import torch
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        epoch, step = int(state["epoch"]), int(state.get("epoch_step", 0))
        planned = int(state["args"]["epochs"])
    except Exception:  # not a checkpoint this job can continue: the run starts again
        return None
    if (epochs is not None and planned != epochs) or (epoch >= planned and step == 0):
        return None
    return f"epoch {epoch}, step {step}"


def stage_train(job: Job) -> None:
    recipe = job.recipe
    command = ["bash", recipe.get("script", TRAIN_SCRIPT), f"--data_path={job.data}",
               f"--output_dir={job.path('train')}",
               f"--image_size={recipe['image_size']}", f"--val-resize-size={recipe['val_resize']}",
               f"--val-crop-size={recipe['image_size']}"]
    for key, flag in (("epochs", "--epochs"), ("batch_size", "--batch_size"), ("lr", "--lr"),
                      ("accum_steps", "--accum_steps")):
        if recipe.get(key) is not None:
            command.append(f"{flag}={recipe[key]}")
    command += recipe["extra"]
    if job.sample:  # its epochs take seconds: epoch-end checkpoints only (main.py's default: every 10 minutes)
        command.append("--checkpoint-minutes=0")
    stopped_at = interrupted_training(job.path("train"), recipe["epochs"])
    if stopped_at:  # otherwise the wrapper starts a new run over an earlier one
        say(f"train: continuing the interrupted run from its checkpoint ({stopped_at})")
        command.append("--auto-resume")
    with EpochProgress(job.path("train", LOG_NAME), recipe["epochs"], _train_sizes(recipe), say):
        output = run("train", command, job.path("logs", "train.log"), job.python)
    found = {k: re.findall(pattern, output) for k, pattern in
             (("fps", r"Final Performance images/sec : ([0-9.]+)"), ("acc1", r"Final Train Accuracy : ([0-9.]+)"))}
    if not (job.path("train", "model_best.pth.tar")).is_file():
        raise StageError(f"stage 'train' wrote no model_best.pth.tar in {job.path('train')}")
    job.results["train"] = {k: float(v[-1]) for k, v in found.items() if v}


def _train_sizes(recipe: dict) -> Callable[[int], int]:
    """Each epoch's train image size under the recipe's ``--progressive-sizes`` (none: ``image_size``)."""
    flag = "--progressive-sizes="
    text = next((arg[len(flag):] for arg in recipe["extra"] if arg.startswith(flag)), None)
    phases = parse_progressive_sizes(text, recipe["image_size"])
    return lambda epoch: train_size_at(epoch, recipe["image_size"], phases)


def stage_export(job: Job) -> None:
    run("export", [job.python, "seresnext50_pth2onnx.py", job.path("train", "model_best.pth.tar"),
                   job.path("se_resnext50_32x4d.onnx"), "--image-size", job.size], job.path("logs", "export.log"),
        job.python)


def stage_preprocess(job: Job) -> None:
    shutil.rmtree(job.path("prep_bin"), ignore_errors=True)  # no .bin of another dataset may stay behind
    run("preprocess", [job.python, "preprocess_se_resnext50_32x4d_pth.py", job.val_flat, job.path("prep_bin"),
                       "--resize", job.resize, "--crop", job.size, "--no-progress"],
        job.path("logs", "preprocess.log"), job.python)


def stage_info(job: Job) -> None:
    run("info", [job.python, "get_info.py", "bin", job.path("prep_bin"), job.path("seresnext50_val.info"),
                 job.size, job.size], job.path("logs", "info_bin.log"), job.python)
    run("info", [job.python, "get_info.py", "jpg", job.val_flat, job.path("ImageNet.info")],
        job.path("logs", "info_jpg.log"), job.python)


def aipp_config(job: Job) -> Path:
    """Upstream's AIPP config, or the same one resized for the sample's resolution (DVPP resizes to a square
    of the val resize size, AIPP crops the centre)."""
    upstream = ROOT / "aipp_se_resnext50_32x4d_pth.config"
    if (job.resize, job.size) == (256, 224):
        return upstream
    start = (job.resize - job.size) // 2 // 2 * 2  # YUV420SP crops start on even pixels
    text = upstream.read_text()
    for key, value in (("src_image_size_w", job.resize), ("src_image_size_h", job.resize),
                       ("load_start_pos_h", start), ("load_start_pos_w", start),
                       ("crop_size_w", job.size), ("crop_size_h", job.size)):
        text, count = re.subn(rf"({key}\s*:\s*)\d+", rf"\g<1>{value}", text)
        assert count == 1, key
    path = job.path("aipp_sample.config")
    path.write_text(text)
    return path


def stage_build(job: Job) -> None:
    run("build", ["bash", "se_resnext50_32x4d_atc.sh", f"--model={job.path('se_resnext50_32x4d.onnx')}",
                  f"--batch_size={job.batch}", f"--image_size={job.size}", f"--aipp_config={aipp_config(job)}",
                  f"--output_dir={job.work}"], job.path("logs", "build.log"), job.python)


def runner_model(job: Job, mode: str) -> Path:
    return job.path(f"seresnext50_32x4d_{'' if mode == 'bin' else 'aipp_'}{job.batch}.onnx")


def runner_info(job: Job, mode: str) -> Path:
    return job.path("seresnext50_val.info" if mode == "bin" else "ImageNet.info")


def runner(job: Job, mode: str) -> None:
    binary = mode == "bin"
    model, info = runner_model(job, mode), runner_info(job, mode)
    size = job.size if binary else job.resize
    shutil.rmtree(job.path(f"result_{mode}"), ignore_errors=True)  # the metric counts every dump in the folder
    run(f"run_{mode}", [job.python, "benchmark.py", "-model_type=vision", f"-om_path={model}", "-device_id=0",
                        f"-batch_size={job.batch}", f"-input_text_path={info}", f"-input_width={size}",
                        f"-input_height={size}", "-output_binary=false", f"-useDvpp={'false' if binary else 'true'}",
                        f"-result_dir={job.path('result_' + mode)}", "-progress=false"],
        job.path("logs", f"run_{mode}.log"), job.python)
    job.results[f"run_{mode}"] = {"images_per_second": end_to_end_rate(job, mode)}


def end_to_end_rate(job: Job, mode: str) -> float | None:
    """The runner's ``[e2e] throughputRate`` from its perf file (None if it wrote none)."""
    perf = job.path(f"result_{mode}", perf_file_name(job.batch, 0))
    return read_perf_file(perf)["e2e"]["throughputRate"] if perf.is_file() else None


def stage_run_bin(job: Job) -> None:
    runner(job, "bin")


def stage_run_jpg(job: Job) -> None:
    runner(job, "jpg")


def stage_metric(job: Job) -> None:
    for mode in ("bin", "jpg"):
        run("metric", [job.python, "vision_metric_ImageNet.py", job.path(f"result_{mode}", "dumpOutput_device0"),
                       job.labels, job.path(f"result_{mode}"), "result.json"], job.path("logs", f"metric_{mode}.log"),
            job.python)


# A stage whose outputs a rerun may continue from (main.py resumes from its checkpoint) when it was interrupted
# with the same inputs; otherwise they are removed before the stage runs again.
RESUMABLE = {"train": "train"}

STAGE_FUNCTIONS: dict[str, Callable[[Job], None]] = {
    "data": stage_data, "train": stage_train, "export": stage_export, "preprocess": stage_preprocess,
    "info": stage_info, "build": stage_build, "run_bin": stage_run_bin, "run_jpg": stage_run_jpg,
    "metric": stage_metric,
}


def stage_inputs(job: Job, stage: str) -> dict:
    """What a stage depends on: settings, and under ``files`` the fingerprints of the files it reads."""
    if stage == "data":
        settings = {"data_path": str(job.data), "sample set": job.sample}
        files = {"val": job.data / "val"} if job.sample else {
            "val": job.data / "val", "val_flat": job.data / "val_flat", "val_label.txt": job.data / "val_label.txt"}
    elif stage == "train":
        train = job.data / "train"
        # the images per class folder, by name only (no stat: cheap on ImageNet's 1.28 million files); the small
        # sample set also has every file's size and time fingerprinted
        folders = sorted((e for e in os.scandir(train) if e.is_dir()), key=lambda e: e.name) if train.is_dir() else []
        per_class = {e.name: sum(1 for _ in os.scandir(e.path)) for e in folders} if train.is_dir() else None
        settings = {"data_path": str(job.data), "recipe": job.recipe, "train images per class": per_class}
        files = {"train": train} if job.sample else {}
    elif stage == "export":
        settings, files = {"image_size": job.size}, {"model_best.pth.tar": job.path("train", "model_best.pth.tar")}
    elif stage == "preprocess":
        settings, files = {"resize": job.resize, "crop": job.size}, {"val_flat": job.val_flat}
    elif stage == "info":
        settings, files = {"size": job.size}, {"prep_bin": job.path("prep_bin"), "val_flat": job.val_flat}
    elif stage == "build":
        settings = {"batch": job.batch, "size": job.size, "resize": job.resize}
        files = {"se_resnext50_32x4d.onnx": job.path("se_resnext50_32x4d.onnx")}
    elif stage in ("run_bin", "run_jpg"):
        mode = stage[4:]
        settings = {"batch": job.batch}
        files = {path.name: path for path in (runner_model(job, mode), runner_info(job, mode))}
    elif stage == "metric":
        settings = {}
        files = {"val_label.txt": job.labels,
                 **{f"result_{m}": job.path(f"result_{m}", "dumpOutput_device0") for m in ("bin", "jpg")}}
    else:
        raise KeyError(stage)
    return {**settings, "files": {name: fingerprint(path) for name, path in files.items()}}


def read_accuracy(result_json: Path) -> dict:
    """Top-1 and top-5 from a result.json (top-5 is absent for models of fewer than 5 classes: NaN)."""
    values = read_result_json(result_json)
    return {k: float(values[f"Top{k[-1]} accuracy"].rstrip("%")) if f"Top{k[-1]} accuracy" in values else float("nan")
            for k in ("top1", "top5")}


def summary(job: Job) -> tuple[str, list[float]]:
    """The closing table, read back from the files the stages wrote (so a rerun that skipped stages can
    still report them)."""
    train_log = job.path("train", "train_log.jsonl")
    epochs = [json.loads(line) for line in train_log.read_text().splitlines() if line.strip()]
    validated = [e for e in epochs if e.get("val_top1") is not None]  # --eval-freq leaves some epochs out
    if not validated:
        raise StageError(f"{train_log} has no validated epoch; rerun with --from train")
    best = max(validated, key=lambda e: e["val_top1"])
    train_rates = [e["images_per_second"] for e in epochs[1:] or epochs]
    rows = [("training (main.py, val set)", best["val_top1"], best["val_top5"],
             f"{sorted(train_rates)[len(train_rates) // 2]:.1f} img/s training (median epoch)")]
    for mode, name in (("bin", ".bin path (preprocess + runner)"), ("jpg", "JPEG path (DVPP-style + AIPP)")):
        accuracy = read_accuracy(job.path(f"result_{mode}", "result.json"))
        rate = end_to_end_rate(job, mode)
        rows.append((name, accuracy["top1"], accuracy["top5"],
                     f"{rate:.1f} img/s end to end, batch {job.batch}" if rate is not None else "-"))
    lines = ["", "=" * 78, "SE-ResNeXt50_32x4d quickstart: summary", "=" * 78,
             f"{'':40s} {'top-1':>7s} {'top-5':>7s}  speed"]
    lines += [f"{name:40s} {t1:7.2f} {t5:7.2f}  {speed}" for name, t1, t5, speed in rows]
    lines += ["", "artifacts:",
              f"  dataset             {job.data} (labels: {job.labels}, val images: {job.val_flat})",
              f"  checkpoints         {job.path('train', 'checkpoint.pth.tar')}, "
              f"{job.path('train', 'model_best.pth.tar')}",
              f"  training curves     {job.path('train', 'train_curves.png')} ({train_log.name} beside it)",
              f"  ONNX (export)       {job.path('se_resnext50_32x4d.onnx')}",
              f"  runner models       {job.path(f'seresnext50_32x4d_{job.batch}.onnx')}, "
              f"{job.path(f'seresnext50_32x4d_aipp_{job.batch}.onnx')}",
              f"  result.json         {job.path('result_bin', 'result.json')}, {job.path('result_jpg', 'result.json')}",
              f"  stage logs          {job.path('logs')}", "=" * 78]
    return "\n".join(lines), [r[1] for r in rows]


def reason_to_run(job: Job, stage: str, stamp: Path, force: bool, start: str | None,
                  redone: str | None) -> str | None:
    """Why ``stage`` must run ("" on a first run), or None when its stamp shows it done with these inputs."""
    if force:
        return "--force"
    if stage == start:
        return f"--from {stage}"
    if redone:
        return f"after {redone}"
    if stamp.exists():
        return why_redo(stamp, stage_inputs(job, stage))
    return ""


def run_stages(job: Job, force: bool = False, start: str | None = None) -> None:
    """Run the stages that need it, in order; a stage redone makes every later one run too."""
    done = job.path(".done")
    done.mkdir(parents=True, exist_ok=True)
    redone = None
    for number, stage in enumerate(STAGES, 1):
        stamp, running, head = done / stage, done / f"{stage}.running", f"[{number}/{len(STAGES)}] {stage}"
        reason = reason_to_run(job, stage, stamp, force, start, redone)
        if reason is None:
            say(f"{head}: done before with the same inputs, reused (--force or --from {stage} redoes it)")
            continue
        redone = redone or stage
        say(f"{head}: redone: {reason}" if stamp.exists() and reason else f"{head} ...")
        inputs = stage_inputs(job, stage)
        if stage in RESUMABLE and (stamp.exists() or not running.is_file() or why_redo(running, inputs)):
            shutil.rmtree(job.path(RESUMABLE[stage]), ignore_errors=True)  # nothing to continue from
        stamp.unlink(missing_ok=True)
        write_stamp(running, inputs)
        began = time.perf_counter()
        STAGE_FUNCTIONS[stage](job)
        write_stamp(stamp, stage_inputs(job, stage))
        running.unlink()
        say(f"{head}: finished in {time.perf_counter() - began:.0f} s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quickstart.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default=None,
                        help="a real ImageNet (train/, val/<wnid>/, val_flat/, val_label.txt); default: generate "
                             "the sample set into <work>/sample")
    parser.add_argument("--work_dir", default=str(ROOT / "quickstart"), help="where everything goes")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="override the recipe's batch (for the node, per forward pass)")
    parser.add_argument("--accum_steps", type=int, default=None,
                        help="gradient accumulation: each optimizer step takes this many batches, so "
                             "--batch_size=64 --accum_steps=4 keeps the 1p recipe's 256 images per step on a machine "
                             "that cannot hold 256 (main.py's memory check names such a pair)")
    parser.add_argument("--recipe", choices=tuple(REAL_TRAIN), default=None,
                        help="with --data_path: 1p (default: test/train_full_1p.sh, 1 epoch, batch 256, lr 0.1) or "
                             "8p (test/train_full_8p.sh, upstream's 100 epochs, batch 1024, lr 0.4, up to 8 devices)")
    parser.add_argument("--force", action="store_true", help="rerun every stage")
    parser.add_argument("--from", dest="start", choices=STAGES, default=None, help="rerun from this stage on")
    parser.add_argument("--min-top1", type=float, default=None,
                        help="exit non-zero when any printed top-1 is below this (default: 90 on the sample)")
    return parser


def build_recipe(args: argparse.Namespace, sample: bool) -> dict:
    """The training recipe with the command line's overrides (only those given, so that an unchanged recipe
    keeps its stamp)."""
    recipe = dict(SAMPLE_TRAIN if sample else REAL_TRAIN[args.recipe or "1p"])
    for key in ("epochs", "batch_size", "accum_steps"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    return recipe


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    work = Path(args.work_dir).resolve()
    sample = args.data_path is None
    if sample and args.recipe:
        say("error: --recipe chooses the recipe for real data (--data_path); the sample set has its own "
            "(--epochs changes its length)")
        return 2
    recipe = build_recipe(args, sample)
    if any(value is not None and value < 1 for value in (args.epochs, args.batch_size, args.accum_steps)):
        say("error: --epochs, --batch_size and --accum_steps must be at least 1")
        return 2
    job = Job(work=work, data=(work / "sample") if sample else Path(args.data_path).resolve(), sample=sample,
              recipe=recipe)
    if not sample and not job.data.is_dir():
        say(f"error: --data_path {job.data}: no such folder")
        return 2
    started = time.perf_counter()
    try:
        run_stages(job, force=args.force, start=args.start)
        text, top1s = summary(job)
    except (StageError, OSError, ValueError, KeyError) as exc:
        say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted; run it again to continue")
        return 130
    print(text)
    say(f"total {time.perf_counter() - started:.0f} s")
    floor = args.min_top1 if args.min_top1 is not None else (90.0 if sample else None)
    if floor is not None and min(top1s) < floor:
        say(f"error: a top-1 is below {floor}% ({', '.join(f'{t:.2f}' for t in top1s)})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
