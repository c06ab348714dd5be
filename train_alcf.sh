#!/usr/bin/env bash
# Train a GPT: environment variables -> pretrain_gpt.py flags -> launch.
#
#   bash train_alcf.sh                      # the bundled demo: a small GPT on Shakespeare, CPU
#   DATA_FILE_LIST=list.txt TRAIN_TOKENS=$((22*10**9)) GRAD_ACC_STEPS=16 LR=0.0002 \
#       LR_WARMUP_FRACTION=0.01 OPT=adamw bash train_alcf.sh --finetune
#   DRY_RUN=1 bash train_alcf.sh            # print the command and the resolved plan, start nothing
#   CPT_PLAN=ALCF/presets/cpt-demo.yaml bash train_alcf.sh   # a continual-pretraining plan (stages)
#
# Variables map one-to-one onto flags (see ALCF/helpers.sh); extra arguments go to
# pretrain_gpt.py. A variable and a flag that set the same knob to different values are an
# error, never a silent pick. The first run builds .venv (about 3 minutes).
set -euo pipefail
# shellcheck source=ALCF/helpers.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/ALCF/helpers.sh"
train_main "$@"
