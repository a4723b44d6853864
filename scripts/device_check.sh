#!/usr/bin/env bash
# The first run on a machine with a GPU: checks the cuda paths that no CPU run executes, one step at a time,
# in under 8 minutes on one GPU (tiny sizes: 64 px images, a few steps).
#   bash scripts/device_check.sh [--dry-run] [--work_dir=DIR] [--only=N[,N...]]
# Each step has its own timeout and prints PASS, FAIL or SKIP; the summary goes to <work_dir>/summary.txt
# (default work_dir: ${TMPDIR:-/tmp}/seresnext_device_check; an earlier check's is replaced) and the steps' output to
# <work_dir>/logs/. Exit status: 0 when no step failed, 1 otherwise.
# Python: $PYTHON, else python3, used as it is: a GPU machine's own torch (any version with CUDA) is kept, and
# nothing is installed when torch and torchvision import; when another requirement is missing,
# scripts/install.sh --runtime-only --python=... adds it (torch untouched; this needs the network).
# --dry-run: on the CPU, runs the steps that have a CPU side (environment, sample data, float16 loss scaling,
# a world-size-1 gloo group through wrap_ddp, main.py --synthetic, the device-list checks with one simulated
# GPU) and SKIPs the GPU-only ones, so CI checks that the script still parses and its CPU side passes.
set -uo pipefail
cd "$(dirname "$0")/.."
dry_run=false
work_dir="${TMPDIR:-/tmp}/seresnext_device_check"
only=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=true ;;
    --work_dir=*) work_dir="${arg#*=}" ;;
    --only=*) only=",${arg#*=}," ;;
    *) echo "device_check.sh: error: unknown argument '$arg' (expected --dry-run, --work_dir=DIR, --only=N,...)" >&2
       exit 2 ;;
  esac
done
python=${PYTHON:-python3}
if [ -d "$work_dir" ] && [ -n "$(ls -A "$work_dir")" ] && [ ! -f "$work_dir/summary.txt" ]; then
  echo "device_check.sh: error: --work_dir=$work_dir holds other files (not an earlier device check's); give an" \
       "empty or new folder" >&2
  exit 2
fi
rm -rf "$work_dir"
mkdir -p "$work_dir/logs"
work_dir=$(cd "$work_dir" && pwd)
summary="$work_dir/summary.txt"
: > "$summary"
device=cuda
$dry_run && device=cpu
passed=0; failed=0; skipped=0

record() {  # record NUMBER NAME RESULT SECONDS DETAIL
  local line
  line=$(printf '%02d %-34s %-4s %4ss  %s' "$1" "$2" "$3" "$4" "$5")
  echo "$line" | tee -a "$summary"
  case "$3" in PASS) passed=$((passed + 1)) ;; FAIL) failed=$((failed + 1)) ;; *) skipped=$((skipped + 1)) ;; esac
}

# step NUMBER NAME TIMEOUT_SECONDS GPU_ONLY(true|false) FUNCTION: runs FUNCTION (its output in logs/NN_NAME.log);
# PASS when it returns 0; the detail is the log's last line.
step() {
  local number=$1 name=$2 limit=$3 gpu_only=$4 fn=$5 log status started detail
  log="$work_dir/logs/$(printf '%02d' "$number")_$name.log"
  if [ -n "$only" ] && [[ "$only" != *",$number,"* ]]; then
    record "$number" "$name" SKIP 0 "not in --only"; return
  fi
  if $dry_run && $gpu_only; then
    record "$number" "$name" SKIP 0 "GPU only (--dry-run)"; return
  fi
  started=$SECONDS
  timeout --kill-after=10 "$limit" bash -c \
    "set -o pipefail; $(declare -f "$fn"); $(declare -p python device work_dir dry_run); $fn" > "$log" 2>&1
  status=$?
  detail=$(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-160)
  if [ "$status" -eq 0 ]; then
    record "$number" "$name" PASS $((SECONDS - started)) "$detail"
  elif [ "$status" -eq 3 ]; then  # the step found nothing to check here
    record "$number" "$name" SKIP $((SECONDS - started)) "$detail"
  else
    [ "$status" -eq 124 ] && detail="timed out after ${limit} s; last line: $detail"
    record "$number" "$name" FAIL $((SECONDS - started)) "exit $status: $detail"
  fi
}

check_python() {  # torch and torchvision as they are; the rest of requirements.txt only when missing
  local flags="" status
  $dry_run && flags=--dry-run
  "$python" scripts/device_check_steps.py env $flags
  status=$?
  [ $status -eq 4 ] || return $status  # 4: torch works, another requirement is missing
  echo "installing the missing requirements next to this Python's torch (torch untouched)"
  bash scripts/install.sh --runtime-only --python="$python" && "$python" scripts/device_check_steps.py env $flags
}

sample_data() {
  "$python" -m seresnext.sample_data --out "$work_dir/sample" --num-classes 2 --train-per-class 16 \
    --val-per-class 8 --min-size 72 --max-size 96 -j 2
}

amp_scaling() { "$python" scripts/device_check_steps.py amp --device "$device"; }

ddp_world_1() { "$python" scripts/device_check_steps.py ddp --device "$device" --work "$work_dir"; }

pinned_batches() { "$python" scripts/device_check_steps.py pinned --data "$work_dir/sample"; }

synthetic_amp() {  # the precision line and FPS@all (float16 on cuda; a dry run: float32 at 32 px)
  local flags=(--amp -b 32 --image-size 64 --stop-step-num 30 --workers 2) out="$work_dir/synthetic"
  $dry_run && flags=(-b 2 --image-size 32 --stop-step-num 2 --workers 0)  # float32: quick on any CPU
  mkdir -p "$out"
  "$python" main.py --synthetic --device "$device" "${flags[@]}" --epochs 1 --print-freq 10 --output-dir "$out" \
    | tee "$out/main.log" || return 1
  local wanted="=> precision: autocast float16 on cuda, static 1024 loss scale"
  $dry_run && wanted="=> precision: "
  grep -q "^$wanted" "$out/main.log" || { echo "no '$wanted' line"; return 1; }
  echo "$(grep -h '^=> precision: ' "$out/main.log" | cut -c1-80) | $(grep -h 'FPS@all' "$out/main.log" | tail -n 1)"
}

real_epoch_resume() {  # one real epoch, then --resume --evaluate, then --auto-resume for a second epoch
  local out="$work_dir/real" common=(--data_path "$work_dir/sample" --device "$device" --amp -b 8 --image-size 64
                                     --workers 2 --print-freq 1 --output-dir "$work_dir/real")
  "$python" main.py "${common[@]}" --epochs 1 || return 1
  "$python" main.py "${common[@]}" --resume "$out/checkpoint.pth.tar" --evaluate || return 1
  "$python" main.py "${common[@]}" --epochs 2 --auto-resume | tee "$out/auto_resume.log" || return 1
  grep -q "=> loaded checkpoint .* (epoch 1)" "$out/auto_resume.log" \
    || { echo "--auto-resume did not resume"; return 1; }
  grep -h "FPS@all" "$out/auto_resume.log" | tail -n 1
}

performance_wrapper() {
  PYTHON="$python" bash test/train_performance_1p.sh --data_path="$work_dir/sample" --device=cuda \
    --batch_size=16 --image_size=64 --workers=2 --output_dir="$work_dir/perf" || return 1
  grep -hE "^ActualFPS = [0-9.]+$" test/output/0/*_perf.log || { echo "no ActualFPS in test/output/0"; return 1; }
}

negative_device_lists() {  # on the CPU: one simulated cuda device, in process
  "$python" scripts/device_check_steps.py negative --device cuda --work "$work_dir/negative" \
    $($dry_run && echo --simulate)
}

demo_cuda_vs_cpu() {
  local image
  image=$(find "$work_dir/sample/val" -type f | sort | head -n 1)
  "$python" scripts/device_check_steps.py demo --checkpoint "$work_dir/real/model_best.pth.tar" --image "$image"
}

offline_cuda() {  # export, --target=cuda build, benchmark.py -provider=cuda; SKIP (exit 3) without onnxruntime-gpu
  local has_cuda="import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"
  if ! "$python" -c "$has_cuda"; then
    echo "SKIP: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"; return 3
  fi
  local out="$work_dir/offline"
  mkdir -p "$out"
  "$python" pthtar2onnx.py "$work_dir/real/model_best.pth.tar" "$out/model.onnx" --batch-size 4 || return 1
  "$python" -m seresnext.build --model "$out/model.onnx" --output "$out/model_cuda_4" --target=cuda \
    --input_shape=actual_input_1:4,3,64,64 || return 1
  "$python" benchmark.py -om_path="$out/model_cuda_4.onnx" -batch_size=4 -round=20 -provider=cuda \
    -result_dir="$out/result" || return 1
  grep -h "^\[backend\] provider: CUDAExecutionProvider" "$out"/result/PureInfer_perf_of_*.txt
}

compile_channels_last() {
  "$python" main.py --synthetic --device cuda --amp --compile --channels-last -b 32 --image-size 64 --epochs 1 \
    --stop-step-num 20 --workers 2 --print-freq 10 --output-dir "$work_dir/compile"
}

echo "device_check: $($dry_run && echo 'dry run on the CPU' || echo 'on cuda'), python $python, work dir $work_dir"
step 1 environment 180 false check_python
step 2 sample_dataset 120 false sample_data
step 3 fp16_static_and_dynamic_scale 120 false amp_scaling
step 4 nccl_world_1_wrap_ddp 120 false ddp_world_1
step 5 pinned_batches 90 true pinned_batches
step 6 synthetic_amp_precision_fps 180 false synthetic_amp
step 7 epoch_resume_evaluate_auto 300 true real_epoch_resume
step 8 train_performance_1p 180 true performance_wrapper
step 9 device_list_negative_cases 120 false negative_device_lists
step 10 demo_cuda_vs_cpu 120 true demo_cuda_vs_cpu
step 11 offline_cuda_provider 300 true offline_cuda
step 12 compile_channels_last 360 true compile_channels_last
total="$passed passed, $failed failed, $skipped skipped"
echo "device_check: $total ($SECONDS s); summary in $summary" | tee -a "$summary"
[ "$failed" -eq 0 ]
