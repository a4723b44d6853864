#!/bin/bash
# Evaluate <output_dir>/model_best.pth.tar on up to 8 devices (--resume --evaluate); cpu: --nproc= processes.
# Usage: bash test/train_eval_8p.sh --data_path=DIR [--device_id=N] [--epochs= --batch_size= --lr= --nproc=
#        --image_size= --workers= --output_dir= --device=] [other main.py flags as --flag=value]
# See test/wrapper_common.sh for what it writes and docs/training.md for examples.
Network="Se-ResNext-50-32x4d"
batch_size=1024
learning_rate=0.4
train_epochs=100
layout=8p
case_suffix=eval
evaluate=true
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/wrapper_common.sh" "$@"
