#!/bin/bash
# Shared body of the upstream launch wrappers (test/train_*.sh), sourced by them after they set:
#   Network, batch_size, learning_rate, train_epochs  upstream's recipe for the case
#   layout        1p (one process) or 8p (one process per device: all present devices, at most 8; on cpu
#                 --nproc= processes, default 2)
#   case_suffix   acc, perf or eval (the CaseName ending)
#   evaluate      true: --resume=<output dir>/model_best.pth.tar --evaluate instead of training
# Arguments: --data_path=DIR (required), --device_id=N, and the optional overrides --epochs= --batch_size=
# --lr= --nproc= --image_size= --workers= --output_dir= --device= --accum_steps= (gradient accumulation: the
# batch per optimizer step, and BatchSize in the CaseName, is batch_size x accum_steps); any other
# --flag[=value] goes to main.py unchanged (e.g. --label-smoothing=0.1, --warmup-epochs=2, --stop-step-num=100).
# Writes test/output/<device id>/train_<device id>.log (main.py's output), <CaseName>.log (key = value
# summary) and train_<CaseName>_loss.txt; checkpoints go to --output_dir (default: the repository root, as
# upstream). A training case starts a new run there, as upstream, replacing an earlier run's checkpoints
# (main.py --overwrite) unless --resume=FILE or --auto-resume is passed.

data_path=""
device_id=${device_id:-0}
nproc=""
image_size=""
workers=""
output_dir=""
device=""
accum_steps=1
extra_args=()
for para in "$@"; do
    case "${para}" in
        --data_path=*)  data_path="${para#*=}" ;;
        --device_id=*)  device_id="${para#*=}" ;;
        --epochs=*)     train_epochs="${para#*=}" ;;
        --batch_size=*) batch_size="${para#*=}" ;;
        --lr=*)         learning_rate="${para#*=}" ;;
        --nproc=*)      nproc="${para#*=}" ;;
        --image_size=*) image_size="${para#*=}" ;;
        --workers=*)    workers="${para#*=}" ;;
        --output_dir=*) output_dir="${para#*=}" ;;
        --device=*)     device="${para#*=}" ;;
        --accum_steps=*) accum_steps="${para#*=}" ;;
        --*)            extra_args+=("${para}") ;;
        *)              echo "[Error] unknown argument '${para}' (expected --name=value)"; exit 1 ;;
    esac
done

if [[ "${data_path}" == "" ]]; then
    echo "[Error] para \"data_path\" must be confing"
    exit 1
fi
# Numbers only: --nproc, --batch_size and --accum_steps go into shell arithmetic, the device id into the path of
# the output folder that is emptied with rm -rf.
if [[ -n "${nproc}" && ! "${nproc}" =~ ^[1-9][0-9]*$ ]]; then
    echo "[Error] --nproc=${nproc}: expected a positive integer"
    exit 1
fi
for para in "batch_size=${batch_size}" "accum_steps=${accum_steps}"; do
    if [[ ! "${para#*=}" =~ ^[1-9][0-9]*$ ]]; then
        echo "[Error] --${para}: expected a positive integer"
        exit 1
    fi
done
if [[ ! "${device_id}" =~ ^[0-9]+$ ]]; then
    echo "[Error] --device_id=${device_id}: expected a device number (0, 1, ...)"
    exit 1
fi
if [[ -n "${ASCEND_DEVICE_ID:-}" && ! "${ASCEND_DEVICE_ID}" =~ ^[0-9]+$ ]]; then
    echo "[Error] ASCEND_DEVICE_ID=${ASCEND_DEVICE_ID}: expected a device number (0, 1, ...)"
    exit 1
fi

# Run from the repository root (the folder that holds test/), wherever the script was started from.
test_path_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "${test_path_dir}/.." || exit 1
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

check_etp_flag=$(env | grep etp_running_flag)
etp_flag=${check_etp_flag#*=}
if [ x"${etp_flag}" != x"true" ]; then
    source "${test_path_dir}/env_npu.sh"
fi

# The device, as main.py picks it (npu > cuda > cpu) unless --device= names one, and how many to use.
read -r device device_total <<< "$("${PYTHON}" -c "
import sys
from seresnext.devices import device_count, normalize_device_type
try:
    d = normalize_device_type(sys.argv[1] or None)
except ValueError as e:
    print('error', e); sys.exit(0)
print(d, device_count(d))" "${device}")"
if [ "${device}" == "error" ] || [ -z "${device}" ]; then
    echo "[Error] cannot use the requested device: ${device_total}"
    exit 1
fi
case "${device}" in
    npu) backend=hccl ;;
    cuda) backend=nccl ;;
    *) backend=gloo ;;
esac

if [ "${layout}" == "8p" ]; then
    if [ "${device}" == "cpu" ]; then
        RANK_SIZE=${nproc:-2}
    else
        RANK_SIZE=$(( device_total < 8 ? device_total : 8 ))
        if [ -n "${nproc}" ] && [ "${nproc}" -lt "${RANK_SIZE}" ]; then RANK_SIZE=${nproc}; fi
    fi
    ASCEND_DEVICE_ID=0
    device_list=$(seq -s, 0 $(( RANK_SIZE - 1 )))
else
    RANK_SIZE=1
    if [ -z "${ASCEND_DEVICE_ID:-}" ]; then ASCEND_DEVICE_ID=${device_id}; fi
    echo "device id is ${ASCEND_DEVICE_ID}"
fi
export RANK_SIZE ASCEND_DEVICE_ID

if [ -z "${workers}" ]; then
    if [ "${device}" == "cpu" ]; then
        workers=$(nproc 2>/dev/null || echo 2)
    elif [ "${layout}" == "8p" ]; then
        workers=192
    else
        workers=24
    fi
fi
output_dir=${output_dir:-.}

out="${test_path_dir}/output/${ASCEND_DEVICE_ID}"
rm -rf "${out}"
mkdir -p "${out}"
log="${out}/train_${ASCEND_DEVICE_ID}.log"

cmd=("${PYTHON}" -u main.py
     --data="${data_path}"
     --workers "${workers}"
     --epoch="${train_epochs}"
     --batch-size="${batch_size}"
     --accum-steps="${accum_steps}"
     --lr="${learning_rate}"
     --momentum 0.9
     --wd 1e-4
     --device "${device}")
if [ "${layout}" == "8p" ]; then
    cmd+=(--device-list "${device_list}" --multiprocessing-distributed --world-size 1 --rank 0
          --addr "127.0.0.1" --port "29588" --dist-backend "${backend}")
else
    cmd+=(--gpu="${ASCEND_DEVICE_ID}")
fi
# --amp: float16 with a static loss scale of 16 on npu/cuda; on cpu bfloat16 where native, else float32 (main.py
# probes the CPU and says which in its "=> precision:" line).
cmd+=(--amp --opt-level "O2" --eval-freq 1 --loss-scale-value 16 --output-dir "${output_dir}")
if [ -n "${image_size}" ]; then cmd+=(--image-size "${image_size}"); fi
if [ "${evaluate}" == "true" ]; then
    cmd+=(--resume="${output_dir}/model_best.pth.tar" --evaluate)
elif [[ ! " ${extra_args[*]} " =~ \ --(resume|auto-resume) ]]; then
    cmd+=(--overwrite)  # a new run, as upstream's wrappers started
fi
cmd+=("${extra_args[@]}")

echo "${Network}: ${case_suffix} run on ${device} x ${RANK_SIZE}, log ${log}"
start_time=$(date +%s)
"${cmd[@]}" > "${log}" 2>&1 &
main_pid=$!
trap 'kill -TERM ${main_pid} 2>/dev/null' INT TERM
wait ${main_pid}
status=$?
while kill -0 ${main_pid} 2>/dev/null; do  # a trapped signal ended the first wait early
    wait ${main_pid}
    status=$?
done
trap - INT TERM
end_time=$(date +%s)
e2e_time=$(( end_time - start_time ))

if [ "${status}" -ne 0 ]; then
    reason=$(grep -a -E "error:|Error|interrupted" "${log}" | tail -n 1)
    echo "[Error] main.py exited with status ${status}: ${reason:-see ${log}}"
    exit "${status}"
fi

echo "------------------ Final result ------------------"
FPS=$(grep -a 'FPS@all' "${log}" | awk '{print $NF}' | tail -n 1)
train_accuracy=$(grep -a '\* Acc@1' "${log}" | tail -n 1 | awk -F "Acc@1" '{print $NF}' | awk '{print $1}')
if [ "${evaluate}" != "true" ]; then
    echo "Final Performance images/sec : ${FPS}"
fi
echo "Final Train Accuracy : ${train_accuracy}"
echo "E2E Training Duration sec : ${e2e_time}"

BatchSize=$(( batch_size * accum_steps ))  # images per optimizer step (main.py's -b is per micro-batch)
DeviceType=$(uname -m)
CaseName=${Network}_bs${BatchSize}_${RANK_SIZE}p_${case_suffix}
ActualFPS=${FPS}
# ms per optimizer step: every process takes one step on its share of the node's batch at the same time.
TrainingTime=$(awk -v b="${BatchSize}" -v f="${FPS}" 'BEGIN { if (f + 0 > 0) printf "%.2f\n", b * 1000 / f; else print "N/A" }')
if [ "${evaluate}" == "true" ]; then
    ActualLoss=$(grep -a '=> validation loss' "${log}" | tail -n 1 | awk '{print $4}')
else
    grep -a 'Epoch:' "${log}" | grep -v Test | awk -F "Loss" '{print $NF}' | awk '{print $1}' > "${out}/train_${CaseName}_loss.txt"
    ActualLoss=$(awk 'END {print}' "${out}/train_${CaseName}_loss.txt")
fi

summary="${out}/${CaseName}.log"
{
    echo "Network = ${Network}"
    echo "RankSize = ${RANK_SIZE}"
    echo "BatchSize = ${BatchSize}"
    echo "DeviceType = ${DeviceType}"
    echo "CaseName = ${CaseName}"
    if [ "${evaluate}" != "true" ]; then
        echo "ActualFPS = ${ActualFPS}"
        echo "TrainingTime = ${TrainingTime}"
    fi
    echo "TrainAccuracy = ${train_accuracy}"
    echo "ActualLoss = ${ActualLoss}"
    echo "E2ETrainingTime = ${e2e_time}"
} > "${summary}"
