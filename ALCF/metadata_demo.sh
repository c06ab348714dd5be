#!/usr/bin/env bash
# Metadata-conditioned training on the installed packages' metadata files, with and without
# prefixes, and with prefixes plus a plain-text cooldown (MeCo), then the paired evaluation on
# held-out packages (docs/metadata_usage.md).
#   bash ALCF/metadata_demo.sh            # CPU, ~25 minutes on a 2-core machine
# Variables: PYTHON_EXEC, OUT (outputs/metadata-demo), TRAIN_ITERS (preset: 200; warmup 10%),
#   RUNS (default "meta plain cooldown"), COOLDOWN_FRACTION (0.1).
# The cooldown run is a two-stage plan of the stage runner (tools/metadata_cooldown_plan.py ->
# tools/continual_run.py): stage "metadata" on packages_meta.txt for 90% of the iterations, stage
# "cooldown" on packages_plain.txt for the rest, one cosine over both (no rewarm), optimizer
# carried, data position reset.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=ALCF/env.sh
source ALCF/env.sh
setup_python "${PWD}"
PY="${PYTHON}"
OUT="${OUT:-outputs/metadata-demo}"
RUNS="${RUNS:-meta plain cooldown}"
KEYS="url,title,website_description"
ITERS="${TRAIN_ITERS:-200}"
EXTRA=()
if [[ -n "${TRAIN_ITERS:-}" ]]; then
    EXTRA+=(--train-iters "${TRAIN_ITERS}" --lr-warmup-iters "$((TRAIN_ITERS / 10))")
fi
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"

"${PY}" tools/prepare_package_corpus.py --output-dir data/packages --max-chars 1500
"${PY}" tools/preprocess_data.py --input data/packages/train.jsonl --output-prefix data/packages/meta \
    --append-eod --metadata-keys "${KEYS}" --metadata-template bigscience --metadata-probability 0.5
"${PY}" tools/preprocess_data.py --input data/packages/train.jsonl --output-prefix data/packages/plain \
    --append-eod
for run in ${RUNS}; do
    if [[ "${run}" == "cooldown" ]]; then
        mkdir -p "${OUT}"
        # The preset's peak/final LR and 10% warmup, one schedule over both stages.
        "${PY}" -W ignore tools/metadata_cooldown_plan.py --name cooldown --output-dir "${OUT}" \
            --config ALCF/presets/metadata-demo.yaml --launcher python \
            --metadata-data-file-list ALCF/data-lists/packages_meta.txt \
            --plain-data-file-list ALCF/data-lists/packages_plain.txt \
            --metadata-cooldown-fraction "${COOLDOWN_FRACTION:-0.1}" --train-iters "${ITERS}" \
            --lr 0.002 --min-lr 0.0002 --lr-warmup-iters "$((ITERS / 10))" \
            --output "${OUT}/cooldown.yaml" --run
        continue
    fi
    "${PY}" -W ignore pretrain_gpt.py \
        --config ALCF/presets/metadata-demo.yaml --data-file-list "ALCF/data-lists/packages_${run}.txt" \
        --save "${OUT}/${run}" --tensorboard-dir "${OUT}/${run}/tensorboard" "${EXTRA[@]+"${EXTRA[@]}"}"
done
for run in ${RUNS}; do
    load="${OUT}/${run}"
    [[ "${run}" != "cooldown" ]] || load="${OUT}/cooldown/cooldown"  # the plan's final stage
    echo "== evaluation of the model trained on ${run} data (held-out packages) =="
    "${PY}" -W ignore tools/eval_metadata_ppl.py --load "${load}" --data data/packages/eval.jsonl \
        --metadata-keys "${KEYS}" --prefix 'url: https://github.com ||| ' --output "${load}/eval.json"
done
