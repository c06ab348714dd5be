#!/usr/bin/env bash
# Everything issue 17 asks of a GPU machine, unattended, in about 9 minutes: install the offline
# wheels, run the GPU tests, run the 1.3B throughput benchmark. Results land in $OUT (the device
# tool's output folder), else ./gpu-out:
#   nvidia-smi.txt  pytest.log  gpu_throughput.log  gpu_throughput.json
#
# Before (here, with the package mirror):  bash bench/gpu_setup.sh build     # -> .gpu-wheels/, ~8 MiB
# On the GPU machine (device tool):        run(command="bash bench/gpu_check.sh",
#                                              carry=[".gpu-wheels"], timeout_s=600)
# Variables: WHEELS (wheel folder, default .gpu-wheels), PRESET (default 1.3b),
#            TEST_TIMEOUT_S (default 200), BENCH_TIMEOUT_S (default 320), BENCH_MAX_S (default 220:
#            start no benchmark variant after it).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}" || exit 1
out="${OUT:-${root}/gpu-out}"
mkdir -p "${out}"
python="${PYTHON_EXEC:-python3}"
export PYTHONUNBUFFERED=1 PYTHON_EXEC="${python}"
unset DS_ACCELERATOR  # DeepSpeed picks CUDA by itself

start=${SECONDS}
nvidia-smi >"${out}/nvidia-smi.txt" 2>&1 || echo "gpu_check.sh: nvidia-smi failed" >&2
if ! "${python}" -c "import deepspeed, megatron.core" >/dev/null 2>&1; then
    setup="$(bash bench/gpu_setup.sh install "${WHEELS:-${root}/.gpu-wheels}")" || exit 1
    eval "${setup}"  # export PYTHONPATH=/tmp/gpu-site...
fi
# The image's python has not installed this checkout: it goes on PYTHONPATH (docs/install.md).
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"
"${python}" -c "import torch, deepspeed, megatron.core; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'deepspeed', deepspeed.__version__)" \
    2>&1 | tail -1 | tee -a "${out}/nvidia-smi.txt"

echo "== pytest tests/gpu tests/unit/model/test_reference.py ($((SECONDS - start)) s)"
timeout "${TEST_TIMEOUT_S:-200}" "${python}" -m pytest tests/gpu tests/unit/model/test_reference.py \
    -q -rs -p no:cacheprovider 2>&1 | tee "${out}/pytest.log"
tests_rc=${PIPESTATUS[0]}

echo "== bench/gpu_throughput.py --preset ${PRESET:-1.3b} ($((SECONDS - start)) s)"
timeout "${BENCH_TIMEOUT_S:-320}" "${python}" bench/gpu_throughput.py --preset "${PRESET:-1.3b}" \
    --max-seconds "${BENCH_MAX_S:-220}" --out "${out}/gpu_throughput.json" 2>&1 | grep -v -E "UserWarning|warnings.warn" | tee "${out}/gpu_throughput.log"
bench_rc=${PIPESTATUS[0]}

echo "== done in $((SECONDS - start)) s: pytest rc=${tests_rc}, benchmark rc=${bench_rc}; results in ${out}"
[[ ${tests_rc} -eq 0 && ${bench_rc} -eq 0 ]]
