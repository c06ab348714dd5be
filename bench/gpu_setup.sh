#!/usr/bin/env bash
# Wheels for a GPU machine that has torch but no network (issue 17).
#
# Here (with the package mirror):   bash bench/gpu_setup.sh build [DIR]
#   builds DeepSpeed from its source archive (pure Python; its ops stay JIT) and downloads
#   megatron-core and the pure-Python packages our training path needs that a stock torch image
#   lacks, for CPython 3.12 on x86-64 (the GPU image), into DIR (default .gpu-wheels, git-ignored).
# There (offline):                  bash bench/gpu_setup.sh install [DIR]
#   installs them with --no-index --no-deps into /tmp/gpu-site and prints the PYTHONPATH to use
#   (nothing in the image's own environment is replaced). bench/gpu_check.sh calls this.
#
# The device tool carries at most 64 MiB: name DIR in its `carry` list (about 12 MiB).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cmd="${1:-}"
dir="${2:-${root}/.gpu-wheels}"
site="${GPU_SITE:-/tmp/gpu-site}"
python="${PYTHON_EXEC:-python3}"

# Pinned to what our CPU suite runs (requirements.txt, /work/main/.venv); pydantic is DeepSpeed's.
DEEPSPEED=deepspeed==0.19.8
BINARY=(megatron-core==0.16.1 pydantic-core==2.50.5)
PURE=(hjson==3.1.0 pydantic==2.14.4 annotated-types typing-inspection "typing-extensions>=4.16"
      schedulefree==1.4.1 pytorch-optimizer==4.1.0)

build() {
    mkdir -p "${dir}"
    tmp="$(mktemp -d)"
    trap 'rm -rf "${tmp}"' EXIT
    # DeepSpeed ships only a source archive; its setup.py imports torch, so build it in this
    # environment (DS_BUILD_OPS=0: no compiled ops, the same py3-none-any wheel for any torch).
    "${python}" -m pip download --no-deps --no-binary :all: -d "${tmp}" "${DEEPSPEED}"
    DS_BUILD_OPS=0 "${python}" -m pip wheel --no-deps --no-build-isolation -w "${dir}" "${tmp}"/deepspeed-*.tar.gz
    local platforms=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
             manylinux2014_x86_64 manylinux1_x86_64 linux_x86_64; do
        platforms+=(--platform "${p}")
    done
    "${python}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" -d "${dir}" "${BINARY[@]}" "${PURE[@]}"
    du -sh "${dir}"
    ls "${dir}"
}

install() {
    [[ -d "${dir}" ]] || { echo "gpu_setup.sh: no wheel folder ${dir}; run 'bash bench/gpu_setup.sh build' where pip has a mirror" >&2; exit 1; }
    "${python}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "${site}" "${dir}"/*.whl
    echo "export PYTHONPATH=${site}\${PYTHONPATH:+:\$PYTHONPATH}"
}

case "${cmd}" in
    build) build ;;
    install) install ;;
    *) echo "usage: bash bench/gpu_setup.sh build|install [WHEEL_DIR]" >&2; exit 2 ;;
esac
