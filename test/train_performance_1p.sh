#!/bin/bash
# Performance run on 1 device (upstream recipe: batch 256, lr 0.1, 1 epoch, AMP O2, loss scale 16).
# Usage: bash test/train_performance_1p.sh --data_path=DIR [--device_id=N] [--epochs= --batch_size= --lr= --nproc=
#        --image_size= --workers= --output_dir= --device=] [other main.py flags as --flag=value]
# See test/wrapper_common.sh for what it writes and docs/training.md for examples.
Network="Se-ResNext-50-32x4d"
batch_size=256
learning_rate=0.1
train_epochs=1
layout=1p
case_suffix=perf
evaluate=false
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/wrapper_common.sh" "$@"
