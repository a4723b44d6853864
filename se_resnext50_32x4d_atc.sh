#!/usr/bin/env bash
# ONNX model -> deployable models for the offline runner, as upstream's se_resnext50_32x4d_atc.sh:
#   seresnext50_32x4d_16       binary (.bin) input
#   seresnext50_32x4d_aipp_16  JPEG input through DVPP + AIPP (aipp_se_resnext50_32x4d_pth.config)
#
# The input's name and size come from the graph (seresnext50_pth2onnx.py writes `image`, pthtar2onnx.py
# `actual_input_1`); --input_name= and --image_size= must agree with it (--image_size= fills a dynamic size,
# default 224). With Ascend's `atc` on the PATH (source the CANN set_env.sh first) it runs upstream's two atc
# commands and writes .om files. Without it, it builds the ONNX Runtime equivalents (.onnx) with
# `python -m seresnext.build`, which takes the same atc flags: static batch, the AIPP config compiled into ONNX
# operators, and ONNX Runtime's graph optimizations done once here instead of at every run.
#
# Usage: bash se_resnext50_32x4d_atc.sh [--model=./se_resnext50_32x4d.onnx] [--batch_size=16]
#          [--soc_version=Ascend310] [--aipp_config=./aipp_se_resnext50_32x4d_pth.config]
#          [--output_dir=.] [--backend=auto|atc|onnxruntime] [--target=cpu|cuda] [--image_size=N] [--input_name=X]
#          [--precision=fp32|int8 --calib_dir=DIR [--calib_count=64]] [--optimization=extended|basic|all]
#          [--regroup=false|true]  (fp32 on the CPU: merge small conv groups for ONNX Runtime's NCHWc kernels)
# int8 (ONNX Runtime only) adds _int8 to the names: seresnext50_32x4d_int8_16.onnx, ..._aipp_int8_16.onnx.
set -euo pipefail

model=./se_resnext50_32x4d.onnx
batch_size=16
soc_version=Ascend310
aipp_config=""
output_dir=.
backend=auto
target=cpu
precision=fp32
calib_dir=""
calib_count=64
optimization=extended
regroup=false
input_name=""   # default: the graph's
image_size=""   # default: the graph's (224 where it is dynamic)

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

for arg in "$@"; do
  case "$arg" in
    --model=*) model=${arg#*=} ;;
    --batch_size=*) batch_size=${arg#*=} ;;
    --soc_version=*) soc_version=${arg#*=} ;;
    --aipp_config=*) aipp_config=${arg#*=} ;;
    --output_dir=*) output_dir=${arg#*=} ;;
    --backend=*) backend=${arg#*=} ;;
    --target=*) target=${arg#*=} ;;
    --precision=*) precision=${arg#*=} ;;
    --calib_dir=*) calib_dir=${arg#*=} ;;
    --calib_count=*) calib_count=${arg#*=} ;;
    --optimization=*) optimization=${arg#*=} ;;
    --regroup=*) regroup=${arg#*=} ;;
    --input_name=*) input_name=${arg#*=} ;;
    --image_size=*) image_size=${arg#*=} ;;
    -h|--help) usage; exit 0 ;;
    *) echo "se_resnext50_32x4d_atc.sh: error: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "$0")" && pwd)
[ -n "$aipp_config" ] || aipp_config="$here/aipp_se_resnext50_32x4d_pth.config"
if [ "$regroup" != true ] && [ "$regroup" != false ]; then
  echo "se_resnext50_32x4d_atc.sh: error: --regroup=$regroup: expected true or false" >&2; exit 2
fi
for value in "batch_size=$batch_size" ${image_size:+"image_size=$image_size"}; do
  if ! [[ "${value#*=}" =~ ^[1-9][0-9]*$ ]]; then
    echo "se_resnext50_32x4d_atc.sh: error: --$value: expected a positive integer" >&2; exit 2
  fi
done
for file in "$model" "$aipp_config"; do
  if [ ! -f "$file" ]; then
    echo "se_resnext50_32x4d_atc.sh: error: $file: no such file" >&2; exit 1
  fi
done
case "$backend" in
  auto) if command -v atc >/dev/null 2>&1; then backend=atc; else backend=onnxruntime; fi ;;
  atc|onnxruntime) ;;
  *) echo "se_resnext50_32x4d_atc.sh: error: --backend=$backend: expected auto, atc or onnxruntime" >&2; exit 2 ;;
esac
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x "$here/.venv/bin/python" ]; then python="$here/.venv/bin/python"; else python=python3; fi
fi
if [ -n "$input_name" ] && [ -n "$image_size" ]; then
  shape="$input_name:$batch_size,3,$image_size,$image_size"
else  # read the input's name and size from the graph
  describe=(--model="$model" --describe_input --batch_size="$batch_size")
  [ -z "$image_size" ] || describe+=(--image_size="$image_size")
  [ -z "$input_name" ] || describe+=(--input_name="$input_name")
  errors=$(mktemp)
  if ! shape=$(PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$python" -m seresnext.build "${describe[@]}" 2>"$errors"); then
    echo "se_resnext50_32x4d_atc.sh: error: cannot read the input of $model with $python: $(tail -n 1 "$errors" |
      sed 's/^seresnext.build: error: //') (or pass --input_name= and --image_size=)" >&2
    rm -f "$errors"
    exit 1
  fi
  rm -f "$errors"
fi
echo "se_resnext50_32x4d_atc.sh: input $shape"
mkdir -p "$output_dir"
suffix=""
[ "$precision" = fp32 ] || suffix="_$precision"
binary_out="$output_dir/seresnext50_32x4d${suffix}_${batch_size}"
aipp_out="$output_dir/seresnext50_32x4d_aipp${suffix}_${batch_size}"

if [ "$backend" = atc ]; then
  if ! command -v atc >/dev/null 2>&1; then
    echo "se_resnext50_32x4d_atc.sh: error: --backend=atc but atc is not on the PATH (source" \
         "/usr/local/Ascend/ascend-toolkit/set_env.sh), or use --backend=onnxruntime" >&2
    exit 1
  fi
  if [ "$precision" != fp32 ]; then
    echo "se_resnext50_32x4d_atc.sh: error: --precision=$precision needs ONNX Runtime (--backend=onnxruntime);" \
         "atc builds fp16 .om models (int8 on Ascend goes through AMCT)" >&2
    exit 1
  fi
  # Binary (.bin) input
  atc --model="$model" --framework=5 --output="$binary_out" --input_format=NCHW \
      --input_shape="$shape" --log=info --soc_version="$soc_version"
  # JPEG input (DVPP + AIPP)
  atc --model="$model" --framework=5 --output="$aipp_out" --input_format=NCHW \
      --input_shape="$shape" --log=info --soc_version="$soc_version" --insert_op_conf="$aipp_config"
  echo "se_resnext50_32x4d_atc.sh: wrote $binary_out.om and $aipp_out.om"
  exit 0
fi

extra=(--precision="$precision" --target="$target" --optimization="$optimization")
[ -z "$calib_dir" ] || extra+=(--calib_dir="$calib_dir" --calib_count="$calib_count")
[ "$regroup" = false ] || extra+=(--regroup)
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
echo "se_resnext50_32x4d_atc.sh: atc not used; building ONNX Runtime models with $python -m seresnext.build"
"$python" -m seresnext.aipp "$aipp_config"  # a bad config fails here, before any work
# Binary (.bin) input
"$python" -m seresnext.build --model="$model" --framework=5 --output="$binary_out" --input_format=NCHW \
    --input_shape="$shape" --log=info --soc_version="$soc_version" "${extra[@]}"
# JPEG input (DVPP emulation + AIPP compiled into the graph)
"$python" -m seresnext.build --model="$model" --framework=5 --output="$aipp_out" --input_format=NCHW \
    --input_shape="$shape" --log=info --soc_version="$soc_version" --insert_op_conf="$aipp_config" "${extra[@]}"
echo "se_resnext50_32x4d_atc.sh: wrote $binary_out.onnx and $aipp_out.onnx"
