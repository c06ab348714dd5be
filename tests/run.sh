#!/usr/bin/env bash
# The test command: bootstraps the same environment as train_alcf.sh, then runs pytest on CPU.
#   bash tests/run.sh              # the default suite (no GPU, no slow tests)
#   bash tests/run.sh -k cli       # extra arguments go to pytest
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=ALCF/env.sh
source "${root}/ALCF/env.sh"
setup_python "${root}"
cd "${root}"
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
exec "${PYTHON}" -m pytest -m "not gpu and not slow" -q "$@"
