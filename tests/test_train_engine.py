"""The training loop itself on a tiny stand-in model: log lines, FPS, non-finite losses, stop requests,
all-rank validation (fast: a tiny stand-in model; SE-ResNeXt itself only at 32 px, for BatchNorm under gradient
accumulation)."""
import copy
import math
import re
import signal

import pytest
import torch
from torch import nn

from seresnext.devices import Precision
from seresnext.distributed import DistContext
from seresnext.engine import (EpochPlan, GracefulStop, NonFiniteLossError, Printer, Runtime, TrainConfig, TrainParts,
                              evaluate, train_one_epoch)
from seresnext.faults import FaultHooks
from seresnext.model import se_resnext50_32x4d

CPU = Precision("cpu")


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 6))


def batches(n: int, size: int = 4) -> list:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, 8, 8, generator=gen), torch.randint(0, 6, (size,), generator=gen), [])
            for _ in range(n)]


def runtime(precision=CPU, stop=None) -> Runtime:
    return Runtime(torch.device("cpu"), precision, DistContext(), Printer(DistContext()), stop)


def run_epoch(model, loader, precision=CPU, hooks=None, stop=None, max_nonfinite=20, print_freq=1):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = precision.make_scaler()
    result = train_one_epoch(TrainParts(model, nn.CrossEntropyLoss(), optimizer, scaler, lambda e, s: 0.1, hooks),
                             loader, EpochPlan(0, split_size=100), runtime(precision, stop),
                             TrainConfig(print_freq=print_freq, max_nonfinite_steps=max_nonfinite))
    return result, scaler


def test_progress_and_fps_lines_keep_upstreams_format(capsys):
    result, _ = run_epoch(tiny_model(), batches(12), print_freq=10)
    out = capsys.readouterr().out.splitlines()
    progress = [line for line in out if line.startswith("Epoch:")]
    assert [line.split("\t")[0] for line in progress] == ["Epoch: [0][ 0/12]", "Epoch: [0][10/12]",
                                                         "Epoch: [0][11/12]"]
    assert re.fullmatch(r"Epoch: \[0\]\[ 0/12\]\tTime +[\d.]+ \( *[\d.]+\)\tData +[\d.]+ \( *[\d.]+\)\t"
                        r"Loss \d+\.\d{8} \(\d+\.\d{8}\)\tAcc@1 +[\d.]+ \( *[\d.]+\)\tAcc@5 +[\d.]+ \( *[\d.]+\)",
                        progress[0]), progress[0]
    assert re.fullmatch(r"\[npu id: 0 \] \* FPS@all \d+\.\d{3}", out[-1])
    assert result.steps == 12 and result.images == 48 and result.images_per_second > 0


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_fps_of_short_epochs_is_finite(steps, capsys):
    result, _ = run_epoch(tiny_model(), batches(steps))
    assert math.isfinite(result.images_per_second) and result.images_per_second > 0


def test_float16_scaler_skips_nonfinite_steps_and_training_goes_on(capsys):
    model = tiny_model()
    result, scaler = run_epoch(model, batches(4), Precision("cpu", torch.float16, None), FaultHooks(nan_first=1,
                                                                                                    nan_last=1))
    assert result.nonfinite_steps == 1 and result.steps == 4 and math.isfinite(result.loss)
    assert scaler.get_scale() == 65536.0 / 2  # backed off once
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.state_dict().values() if p.is_floating_point())


def test_persistent_nonfinite_loss_stops_the_epoch(capsys):
    with pytest.raises(NonFiniteLossError, match=r"non-finite \(NaN/inf\) for 3 or more consecutive steps"):
        run_epoch(tiny_model(), batches(10), hooks=FaultHooks(nan_first=2), max_nonfinite=3)
    assert "Epoch: [0][ 4/10]" in capsys.readouterr().out  # noticed at the first check after 3 bad steps


def test_stop_request_ends_the_epoch_at_a_step_boundary(capsys):
    with GracefulStop() as stop:
        signal.raise_signal(signal.SIGTERM)
        result, _ = run_epoch(tiny_model(), batches(5), stop=stop)
    assert stop.name == "SIGTERM" and result.stopped_by_signal and result.steps == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_validation_counts_every_image_and_prints_avg_acc(capsys):
    model = tiny_model()
    loader = batches(3, size=5) + [(torch.empty(0), torch.empty(0, dtype=torch.long), ["x.JPEG (broken)"])]
    result = evaluate(model, nn.CrossEntropyLoss(), loader, runtime(), TrainConfig(print_freq=1), split_size=1000)
    assert result.images == 15 and result.skipped_images == 1
    out = capsys.readouterr().out
    assert re.search(r"^Test: \[0/4\]\tTime +[\d.]+ \( *[\d.]+\)\tLoss \d\.\d{4}e[+-]\d\d", out, re.M)
    assert f"[npu id: 0 ] [AVG-ACC] * Acc@1 {result.top1:.3f} Acc@5 {result.top5:.3f}" in out


def test_float16_overflow_with_a_finite_loss_counts_skipped_steps(capsys):
    """A static scale far too large (upstream's static loss scaling) overflows the float16 gradients while the
    loss stays finite: the scaler skips every step, and the epoch result says so."""
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    result, scaler = run_epoch(model, batches(4), Precision("cpu", torch.float16, 2.0 ** 100))
    assert result.skipped_steps == 4 and result.nonfinite_steps == 0 and math.isfinite(result.loss)
    assert scaler.get_scale() == 2.0 ** 100 and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    result, _ = run_epoch(tiny_model(), batches(4), Precision("cpu", torch.float16, 16.0))
    assert result.skipped_steps == 0


def test_steps_skipped_in_a_row_by_the_loss_scaler_stop_the_run(capsys):
    with pytest.raises(NonFiniteLossError, match=r"the loss scaler has skipped 3 or more consecutive steps because "
                                                 r"their float16 gradients overflowed .* \(epoch 0, step 2\).*"
                                                 r"smaller --loss-scale-value"):
        run_epoch(tiny_model(), batches(10), Precision("cpu", torch.float16, 2.0 ** 100), max_nonfinite=3)


def test_after_step_sees_the_position_and_what_it_raises_ends_the_epoch_after_that_step(capsys):
    """``after_step`` gets (steps of this epoch, steps of the run) after each step; what it raises (main.py: a
    checkpoint write that failed in the background) stops training at once."""
    calls = []

    def after_step(epoch_steps, global_steps):
        calls.append((epoch_steps, global_steps))
        if len(calls) == 2:
            raise OSError("out/checkpoint.pth.tar: cannot write (No space left on device)")

    optimizer = torch.optim.SGD(tiny_model().parameters(), lr=0.1)
    with pytest.raises(OSError, match="No space left"):
        train_one_epoch(TrainParts(tiny_model(), nn.CrossEntropyLoss(), optimizer, CPU.make_scaler(), lambda e, s: 0.1),
                        batches(6), EpochPlan(0, split_size=100, start_step=3, num_steps=6, global_step=10),
                        runtime(), TrainConfig(print_freq=1), after_step=after_step)
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch:")]
    assert calls == [(4, 11), (5, 12)] and len(progress) == 1  # step 4's line is printed after its after_step


def test_stop_request_ends_validation_at_a_batch_boundary(capsys):
    with GracefulStop() as stop:
        signal.raise_signal(signal.SIGTERM)
        result = evaluate(tiny_model(), nn.CrossEntropyLoss(), batches(4), runtime(stop=stop),
                          TrainConfig(print_freq=1), split_size=100)
    assert result.stopped and result.images == 0 and math.isnan(result.top1)
    out = capsys.readouterr().out
    assert "Test: [" not in out and "[AVG-ACC]" not in out
    assert "=> validation stopped by a signal after 0 images; not counted" in out


# ------------------------------------------------------------------------------ gradient accumulation ---

def plain_model() -> nn.Module:
    """No BatchNorm: its output for an image does not depend on the other images of the batch, so a step over
    micro-batches must equal a step over their union."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6))


def accumulate(model, loader, accum, *, precision=CPU, scaler=None, stop=None, num_steps=None):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)
    scaler = scaler or precision.make_scaler()
    result = train_one_epoch(TrainParts(model, nn.CrossEntropyLoss(), optimizer, scaler, lambda e, s: 0.5), loader,
                             EpochPlan(0, split_size=1000, num_steps=num_steps), runtime(precision, stop),
                             TrainConfig(print_freq=1, accum_steps=accum))
    return result, scaler


def whole(micro_batches: list, accum: int) -> list:
    """The same images, ``accum`` micro-batches joined into one batch."""
    return [(torch.cat([m[0] for m in micro_batches[i:i + accum]]),
             torch.cat([m[1] for m in micro_batches[i:i + accum]]), [])
            for i in range(0, len(micro_batches), accum)]


@pytest.mark.parametrize("accum", [2, 4, 8])
def test_an_optimizer_step_over_k_micro_batches_equals_one_over_the_whole_batch(accum, capsys):
    micro = batches(2 * accum, size=3)  # two optimizer steps: momentum and weight decay take part
    accumulated, reference = plain_model(), plain_model()
    result, _ = accumulate(accumulated, micro, accum)
    expected, _ = accumulate(reference, whole(micro, accum), 1)
    assert (result.steps, result.images) == (2, 6 * accum) == (expected.steps, expected.images)
    assert result.loss == pytest.approx(expected.loss, rel=1e-6)
    assert (result.top1, result.top5) == (expected.top1, expected.top5)
    worst = max((a - b).abs().max().item() for a, b in zip(accumulated.parameters(), reference.parameters()))
    assert worst < 1e-6, worst  # float32 summation order only; the weights moved by far more
    assert max((a - b).abs().max().item() for a, b in zip(plain_model().parameters(), reference.parameters())) > 1e-2
    progress = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch:")]
    assert progress == ["Epoch: [0][0/2]", "Epoch: [0][1/2]"] * 2  # steps are optimizer steps


def test_the_loss_scaler_steps_and_updates_once_per_optimizer_step(capsys):
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)  # doubles after every good step
    result, scaler = accumulate(plain_model(), batches(6, size=3), 3, precision=Precision("cpu", torch.float16, None),
                                scaler=scaler)
    assert result.steps == 2 and result.skipped_steps == 0
    assert scaler.get_scale() == 1024.0 * 2 ** 2  # two updates, not six


def test_a_stop_request_mid_accumulation_finishes_the_optimizer_step(capsys):
    """Stops (and checkpoints) happen only at optimizer-step boundaries: a signal during the first micro-batch
    still runs the rest of that step, so a resumed run never starts mid-accumulation."""
    taken = []

    def loader(stop):
        for k, item in enumerate(batches(8, size=3)):
            taken.append(k)
            if k == 0:
                stop.signum = signal.SIGTERM  # as GracefulStop's handler does
            yield item

    with GracefulStop() as stop:
        result, _ = accumulate(plain_model(), loader(stop), 4, stop=stop, num_steps=2)
    assert result.stopped_by_signal and result.steps == 1 and result.images == 12 and taken == [0, 1, 2, 3]


def se_resnext_pair(freeze_batchnorm: bool) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Three copies of one SE-ResNeXt (6 classes): the initial weights kept, and two to train."""
    torch.manual_seed(0)
    model = se_resnext50_32x4d(num_classes=6)
    for module in model.modules():
        if freeze_batchnorm and isinstance(module, nn.BatchNorm2d):
            module.requires_grad_(False)  # --pretrained's backbone: set_train_mode keeps such layers in eval mode
    return model, copy.deepcopy(model), copy.deepcopy(model)


def max_difference(a: nn.Module, b: nn.Module) -> float:
    """Over the weights and the BatchNorm running statistics."""
    return max((x - y).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values())
               if x.is_floating_point())


def test_batchnorm_normalises_each_micro_batch_on_its_own(capsys):
    """SE-ResNeXt itself, one step of 2 micro-batches of 2 images at 32 px. BatchNorm in eval mode (frozen) couples
    no images, and K micro-batches equal one batch of all of them. In training mode each micro-batch is normalised
    with its own statistics, as each device of a DDP run normalises its own share: the step then equals K separate
    forward and backward passes of loss / K, and the running statistics move once per micro-batch."""
    gen = torch.Generator().manual_seed(1)
    micro = [(torch.randn(2, 3, 32, 32, generator=gen), torch.randint(0, 6, (2,), generator=gen), [])
             for _ in range(2)]
    initial, frozen, frozen_whole = se_resnext_pair(True)
    accumulate(frozen, micro, 2)
    accumulate(frozen_whole, whole(micro, 2), 1)
    assert max_difference(frozen, frozen_whole) < 1e-6
    assert max_difference(frozen, initial) > 1e-3  # the steps moved the weights

    reference, trained, trained_whole = se_resnext_pair(False)
    accumulate(trained, micro, 2)
    accumulate(trained_whole, whole(micro, 2), 1)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)
    reference.train()
    for images, target, _ in micro:
        (nn.functional.cross_entropy(reference(images), target) / 2).backward()
    optimizer.step()
    assert max_difference(trained, reference) < 1e-6
    assert max_difference(trained, trained_whole) > 1e-3  # a batch of 4 has other statistics than two of 2


def test_the_profiled_step_and_its_trace_export_stay_out_of_fps(tmp_path, monkeypatch, capsys):
    """A fake clock that only the trace export moves by much: FPS@all must not see the export."""
    import types

    from seresnext import engine

    now = [0.0]

    def clock() -> float:
        now[0] += 0.001
        return now[0]

    class SlowExportProfile:
        def __init__(self, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def export_chrome_trace(self, path):
            now[0] += 1000.0  # a long export
            (tmp_path / "output.prof").write_text("{}")

    monkeypatch.setattr(engine, "time", types.SimpleNamespace(perf_counter=clock))
    monkeypatch.setattr(torch.profiler, "profile", SlowExportProfile)
    model = tiny_model()
    parts = TrainParts(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), CPU.make_scaler(),
                       lambda e, s: 0.1)
    result = train_one_epoch(parts, batches(12), EpochPlan(0, split_size=100), runtime(),
                             TrainConfig(print_freq=100, profile_path=tmp_path / "output.prof"))
    out = capsys.readouterr().out
    assert f"=> profile of step 4 written to '{tmp_path / 'output.prof'}'" in out  # the last warm-up step
    # 7 steps of 4 images in the window, each a few clock ticks: thousands of images/s; with the export inside the
    # window it would be 28 / 1000 s
    assert result.images_per_second > 100, result.images_per_second
    assert result.seconds > 1000  # the epoch's own time does include it
