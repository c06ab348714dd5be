#!/usr/bin/env bash
# Metadata-conditioned training on the installed packages' metadata files, with and without
# prefixes, then the paired evaluation on held-out packages (README "Metadata-conditioned training").
#   bash ALCF/metadata_demo.sh            # CPU, ~10 minutes on a 2-core machine
# Variables: PYTHON_EXEC, OUT (outputs/metadata-demo), TRAIN_ITERS (preset: 200; warmup 10%).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON_EXEC:-.venv/bin/python}"
OUT="${OUT:-outputs/metadata-demo}"
KEYS="url,title,website_description"
EXTRA=()
if [[ -n "${TRAIN_ITERS:-}" ]]; then
    EXTRA+=(--train-iters "${TRAIN_ITERS}" --lr-warmup-iters "$((TRAIN_ITERS / 10))")
fi

"${PY}" tools/prepare_package_corpus.py --output-dir data/packages --max-chars 1500
"${PY}" tools/preprocess_data.py --input data/packages/train.jsonl --output-prefix data/packages/meta \
    --append-eod --metadata-keys "${KEYS}" --metadata-template bigscience --metadata-probability 0.5
"${PY}" tools/preprocess_data.py --input data/packages/train.jsonl --output-prefix data/packages/plain \
    --append-eod
for run in meta plain; do
    DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}" "${PY}" -W ignore pretrain_gpt.py \
        --config ALCF/presets/metadata-demo.yaml --data-file-list "ALCF/data-lists/packages_${run}.txt" \
        --save "${OUT}/${run}" --tensorboard-dir "${OUT}/${run}/tensorboard" "${EXTRA[@]}"
done
for run in meta plain; do
    echo "== evaluation of the model trained on ${run} data (held-out packages) =="
    "${PY}" -W ignore tools/eval_metadata_ppl.py --load "${OUT}/${run}" --data data/packages/eval.jsonl \
        --metadata-keys "${KEYS}" --prefix 'url: https://github.com ||| ' --output "${OUT}/${run}/eval.json"
done
