#!/usr/bin/env bash
# Check the distributed environment with the launcher's own topology and launch line:
# every rank reports host/rank/device, then an all-reduce must succeed.
#   bash ALCF/env_check.sh                 # local (NPROC processes on CPU), or inside a PBS/Slurm job
#   DRY_RUN=1 bash ALCF/env_check.sh       # print the launch line only
set -euo pipefail
# shellcheck source=ALCF/helpers.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/helpers.sh"
cd "${REPO_ROOT}" || exit 1
setup_python "${REPO_ROOT}"
detect_topology
launch_command
if ! command -v nvidia-smi >/dev/null 2>&1; then
    export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi
print_topology
cmd=("${LAUNCH[@]}" "${REPO_ROOT}/tools/env_check.py")
printf '[env_check.sh] command: %s\n' "${cmd[*]}"
[[ "${DRY_RUN:-0}" == "0" ]] || exit 0
exec "${cmd[@]}"
