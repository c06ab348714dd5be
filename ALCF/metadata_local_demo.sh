#!/usr/bin/env bash
# Local (inline HTML) metadata on real HTML (docs/metadata_local.md): pydoc's pages of
# standard-library modules, trained at equal tokens on plain text, on text with its html tags
# inline (masked, half the documents, 2 pre-drawn variants), and with html + title/url prefixes;
# then per-type paired perplexities on held-out modules.
#   bash ALCF/metadata_local_demo.sh      # CPU, ~10-15 minutes on a shared 2-core machine
# Variables: PYTHON_EXEC, OUT (outputs/metadata-local-demo), RUNS ("plain html html_global"),
#   MAX_DOCS (evaluation documents, 300).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=ALCF/env.sh
source ALCF/env.sh
setup_python "${PWD}"
PY="${PYTHON}"
OUT="${OUT:-outputs/metadata-local-demo}"
RUNS="${RUNS:-plain html html_global}"
DATA=data/pydoc_html
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"

[[ -f "${DATA}/eval.jsonl" ]] || "${PY}" tools/prepare_pydoc_html_corpus.py --output-dir "${DATA}"
common=(--input "${DATA}/train.jsonl" --append-eod --metadata-seed 1234)
"${PY}" tools/preprocess_data.py "${common[@]}" --output-prefix "${DATA}/plain"
"${PY}" tools/preprocess_data.py "${common[@]}" --output-prefix "${DATA}/html" \
    --metadata-list html --metadata-probability 0.5 --metadata-variants 2
"${PY}" tools/preprocess_data.py "${common[@]}" --output-prefix "${DATA}/html_global" \
    --metadata-list html,title,url --metadata-probability 0.5 --metadata-variants 2
for run in ${RUNS}; do
    "${PY}" -W ignore pretrain_gpt.py --config ALCF/presets/metadata-local-demo.yaml \
        --data-file-list "ALCF/data-lists/pydoc_html_${run}.txt" --save "${OUT}/${run}"
done
for run in ${RUNS}; do
    echo "== evaluation of the model trained on ${run} (held-out modules) =="
    "${PY}" -W ignore tools/eval_metadata_ppl.py --load "${OUT}/${run}" --data "${DATA}/eval.jsonl" \
        --metadata-list html,title,url --max-documents "${MAX_DOCS:-300}" --output "${OUT}/${run}/eval.json"
done
