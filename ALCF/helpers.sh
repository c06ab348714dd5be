# shellcheck shell=bash
# Launcher helpers for train_alcf.sh: environment variables -> pretrain_gpt.py flags -> launch.
#
# The launcher owns topology and the launch line. Each per-run variable maps one-to-one onto a
# flag; it does no batch arithmetic (pretrain_gpt.py derives and prints every derived value).
# A flag typed after `bash train_alcf.sh` always wins over the launcher's defaults, and the same
# knob given by a variable and by a flag with different values is an error (pretrain_gpt.py
# rejects a flag repeated with different values).

HELPERS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${HELPERS_DIR}/.." && pwd)"
# shellcheck source=ALCF/env.sh
source "${HELPERS_DIR}/env.sh"
# shellcheck source=ALCF/topology.sh
source "${HELPERS_DIR}/topology.sh"

# VARIABLE|--flag  (value variables). Aliases map to the same flag.
ENV_VALUE_FLAGS=(
    "DATA_FILE_LIST|--data-file-list"
    "TRAIN_TOKENS|--train-tokens"
    "TRAIN_ITERS|--train-iters"
    "TRAIN_SAMPLES|--train-samples"
    "GRAD_ACC_STEPS|--gradient-accumulation-steps"
    "GLOBAL_BATCH|--global-batch-size"
    "MICRO_BATCH|--micro-batch-size"
    "SEQ_LEN|--seq-length"
    "SEQ|--seq-length"
    "LR|--lr"
    "MIN_LR|--min-lr"
    "LR_WARMUP_FRACTION|--lr-warmup-fraction"
    "LR_WARMUP_FRAC|--lr-warmup-fraction"
    "LR_WARMUP_ITERS|--lr-warmup-iters"
    "LR_DECAY_STYLE|--lr-decay-style"
    "LR_DECAY_ITERS|--lr-decay-iters"
    "OPT|--optimizer"
    "OBJECTIVE|--objective"
    "NUM_MC|--num-mc"
    "WEIGHT_DECAY|--weight-decay"
    "CLIP_GRAD|--clip-grad"
    "ADAM_BETA1|--adam-beta1"
    "ADAM_BETA2|--adam-beta2"
    "ADAM_EPS|--adam-eps"
    "INIT_METHOD_STD|--init-method-std"
    "SCALING_RECIPE|--scaling-recipe"
    "MUP_BASE_WIDTH|--mup-base-hidden-size"
    "DEPTH_BASE|--mup-base-num-layers"
    "DEPTH_ALPHA|--depth-alpha"
    "TP|--tensor-model-parallel-size"
    "PP|--pipeline-model-parallel-size"
    "SP|--ds-sequence-parallel-size"
    "ZERO_STAGE|--zero-stage"
    "NLAYERS|--num-layers"
    "HIDDEN|--hidden-size"
    "FFN_HIDDEN_SIZE|--ffn-hidden-size"
    "HEADS|--num-attention-heads"
    "NUM_KV_HEAD|--num-key-value-heads"
    "ROPE_THETA|--rotary-base"
    "TOKENIZER_TYPE|--tokenizer-type"
    "TOKENIZER_MODEL|--tokenizer-model"
    "LOAD|--load"
    "SAVE|--save"
    "SAVE_INTERVAL|--save-interval"
    "EVAL_INTERVAL|--eval-interval"
    "EVAL_ITERS|--eval-iters"
    "LOG_INTERVAL|--log-interval"
    "TBDIR|--tensorboard-dir"
    "DATA_CACHE_PATH|--data-cache-path"
    "EXIT_DURATION_MINS|--exit-duration-in-mins"
    "KILL_SWITCH_FILE|--kill-switch-file"
    "SEED|--seed"
    "FUSED_CE_CHUNK_TOKENS|--fused-ce-chunk-tokens"
    "ACT_CKPT_NUM_LAYERS|--recompute-num-layers"
    "WANDB_PROJECT|--wandb-project"
    "WANDB_EXP_NAME|--wandb-exp-name"
    # The argonne fork's launcher spellings (docs/compatibility.md).
    "OPTIMIZER|--optimizer"
    "OPTIM|--optimizer"
    "TRAIN_ITER|--train-iters"
    "VOCAB_FILE|--vocab-file"
    "MERGE_FILE|--merge-file"
    "DS_CONFIG|--deepspeed-config"
    "BE|--distributed-backend"
    "CCL|--distributed-backend"
    "NCCL|--distributed-backend"
    "DATA_PATH|--data-path"
    "TIMING_LOG_LEVEL|--timing-log-level"
)
# VARIABLE|--flag  (switches: 1/true/yes -> --flag, 0/false/no -> --no-flag).
ENV_SWITCH_FLAGS=(
    "SEQUENCE_PARALLEL|--sequence-parallel"
    "CPU_OPTIMIZER|--cpu-optimizer"
    "USE_ACTIVATION_CHECKPOINTING|--recompute-activations"
    "FUSED_CE|--fused-linear-cross-entropy"
    "COMPILE|--compile"
    "SKIP_TRAIN|--skip-train"
    "OVERRIDE_CKPT_OPT_PARAM|--override-opt-param-scheduler"
)
# VARIABLE|reason  (the argonne fork's variables with no counterpart: an error when set).
ENV_REFUSED=(
    "NO_LLAMA|the architecture comes from MODEL_ARCH / --config; give the flags you want instead (--no-swiglu, --normalization layernorm, ...)"
    "ZERO_HPZ_PARTITION_SIZE|ZeRO++ hierarchical partitioning is not configured by the launcher"
    "MICS_SHARD_SIZE|DeepSpeed MiCS sharding is not configured by the launcher"
    "COMMS_LOGGER|DeepSpeed's communication logger is not configured by the launcher"
    "CKPT_DIR|use SAVE=DIR (and LOAD=DIR to resume from it)"
    "HOSTFILE|the node list is read from PBS_NODEFILE or SLURM_JOB_NODELIST (or NUM_NODES without a scheduler)"
    "LAUNCH_WITH|the launch command follows the scheduler: mpiexec under PBS, srun under Slurm, torchrun otherwise"
    "LAUNCH_CMD|the launch command follows the scheduler: mpiexec under PBS, srun under Slurm, torchrun otherwise"
    "EXEC|the launcher always runs pretrain_gpt.py"
    "GPUS_PER_NODE|use NGPU_PER_HOST (ranks per node)"
    "DATA_PARENT|data file lists name their dataset prefixes; give DATA_FILE_LIST"
)
# VARIABLE|reason  (accepted and logged, nothing to change here).
ENV_NO_OP=(
    "DEBUG|the fork's shell tracing; this launcher prints its command and the resolved plan"
)

_die() {
    printf 'train_alcf.sh: error: %s\n' "$*" >&2
    exit 2
}

_switch_value() {
    local name="$1" value="$2"
    case "${value,,}" in
        1 | true | yes | on) return 0 ;;
        0 | false | no | off | "") return 1 ;;
        *) _die "${name}=${value}: expected 1/0 (or true/false)" ;;
    esac
}

# env_to_flags: fills the array FLAGS from the variables that are set, FLAG_SOURCES with
# "VARIABLE -> --flag" lines for the echo, and exports TRAIN_ALCF_FLAG_SOURCES ("--flag=VARIABLE"
# pairs) so pretrain_gpt.py names the variable as each value's source.
env_to_flags() {
    FLAGS=()
    FLAG_SOURCES=()
    local entry name flag value pairs=()
    local -A owner=() owner_value=()
    for entry in "${ENV_VALUE_FLAGS[@]}"; do
        name="${entry%%|*}"
        flag="${entry#*|}"
        [[ -n "${!name+x}" ]] || continue
        value="${!name}"
        [[ -n "${value}" ]] || _die "${name} is set but empty; unset it or give a value"
        # Two spellings of one knob (LR_WARMUP_FRACTION / LR_WARMUP_FRAC): one owner per flag.
        if [[ -n "${owner[${flag}]:-}" ]]; then
            [[ "${owner_value[${flag}]}" == "${value}" ]] ||
                _die "${owner[${flag}]}=${owner_value[${flag}]} and ${name}=${value} both set ${flag} with different values; unset one"
            FLAG_SOURCES+=("${name}=${value} -> ${flag} (the same value as ${owner[${flag}]})")
            continue
        fi
        owner["${flag}"]="${name}"
        owner_value["${flag}"]="${value}"
        FLAGS+=("${flag}" "${value}")
        FLAG_SOURCES+=("${name}=${value} -> ${flag}")
        pairs+=("${flag}=${name}")
    done
    for entry in "${ENV_SWITCH_FLAGS[@]}"; do
        name="${entry%%|*}"
        flag="${entry#*|}"
        [[ -n "${!name+x}" ]] || continue
        if _switch_value "${name}" "${!name}"; then
            FLAGS+=("${flag}")
        else
            FLAGS+=("--no-${flag#--}")
        fi
        FLAG_SOURCES+=("${name}=${!name} -> ${flag}")
        pairs+=("${flag}=${name}")
    done
    fork_variables
    if [[ -n "${MODEL_ARCH:-}" ]]; then
        local preset="${HELPERS_DIR}/presets/arch/${MODEL_ARCH}.yaml"
        if [[ ! -f "${preset}" ]]; then
            local known=() file
            for file in "${HELPERS_DIR}"/presets/arch/*.yaml; do
                file="${file##*/}"
                known+=("${file%.yaml}")
            done
            _die "MODEL_ARCH=${MODEL_ARCH}: unknown preset; known: ${known[*]} (files in ALCF/presets/arch/)"
        fi
        FLAGS+=(--config "${preset}")
        FLAG_SOURCES+=("MODEL_ARCH=${MODEL_ARCH} -> --config ${preset}")
    fi
    if [[ -n "${DTYPE:-}" ]]; then
        case "${DTYPE}" in
            bf16) FLAGS+=(--bf16) ;;
            fp16) FLAGS+=(--fp16) ;;
            fp32) ;;
            *) _die "DTYPE=${DTYPE}: expected bf16, fp16 or fp32" ;;
        esac
        FLAG_SOURCES+=("DTYPE=${DTYPE}")
        pairs+=("--bf16=DTYPE" "--fp16=DTYPE")
    fi
    export TRAIN_ALCF_FLAG_SOURCES="${pairs[*]+"${pairs[*]}"}"
}

# fork_variables: the argonne fork's variables that are not one flag each (called by env_to_flags;
# adds to its FLAGS, FLAG_SOURCES and pairs). Refused ones stop here, naming themselves.
fork_variables() {
    local entry name reason
    for entry in "${ENV_REFUSED[@]}"; do
        name="${entry%%|*}"
        reason="${entry#*|}"
        [[ -z "${!name:-}" ]] || _die "${name}=${!name}: not supported: ${reason}"
    done
    for entry in "${ENV_NO_OP[@]}"; do
        name="${entry%%|*}"
        reason="${entry#*|}"
        [[ -z "${!name:-}" ]] || FLAG_SOURCES+=("${name}=${!name} -> nothing (${reason})")
    done
    if [[ -n "${NO_FLASH_ATTN:-}" ]]; then  # any value, as the fork reads it
        FLAGS+=(--no-use-flash-attn)
        FLAG_SOURCES+=("NO_FLASH_ATTN=${NO_FLASH_ATTN} -> --no-use-flash-attn")
        pairs+=("--use-flash-attn=NO_FLASH_ATTN")
    fi
    if [[ -n "${TRAIN_SPLIT:-}${VAL_SPLIT:-}${TEST_SPLIT:-}" ]]; then
        local split="${TRAIN_SPLIT:-990},${VAL_SPLIT:-10},${TEST_SPLIT:-0}"  # the fork's defaults
        FLAGS+=(--split "${split}")
        FLAG_SOURCES+=("TRAIN_SPLIT/VAL_SPLIT/TEST_SPLIT -> --split ${split}")
        pairs+=("--split=TRAIN_SPLIT/VAL_SPLIT/TEST_SPLIT")
    fi
}

# _accelerator_has_bf16: true on an NVIDIA GPU of compute capability 8.0 or more (A100, H100)
# or an Intel GPU (xpu-smi); the fork's launcher trains those in bf16 by default.
_accelerator_has_bf16() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        local cap
        cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1)"
        [[ "${cap%%.*}" =~ ^[0-9]+$ ]] && ((${cap%%.*} >= 8))
        return
    fi
    command -v xpu-smi >/dev/null 2>&1
}

# _names_own_config ARGS...: true when the arguments bring their own configuration or data.
_names_own_config() {
    local arg
    for arg in "$@"; do
        case "${arg}" in
            --config | --config=* | --data-file-list | --data-file-list=* | --data_file_list | \
                --data_file_list=* | --mock-data | --mock_data | --data-path | --data-path=* | \
                --data_path | --data_path=*) return 0 ;;
        esac
    done
    return 1
}

# demo_flags: the no-argument demo (DATA_FILE_LIST, MODEL_ARCH, --config, --data-file-list and
# --mock-data all absent) runs ALCF/presets/demo.yaml, preparing its corpus once.
# Otherwise the launcher's only defaults are --save/--tensorboard-dir "auto" (checkpoints/<run
# name>) and --load auto (the run's own --save), passed as --launcher-default: pretrain_gpt.py applies them only to values that no
# file, variable or flag sets, and resolves the name after the merge.
demo_flags() {
    DEMO_FLAGS=()
    if [[ -z "${DATA_FILE_LIST:-}${DATA_PATH:-}" && -z "${MODEL_ARCH:-}" ]] && ! _names_own_config "$@"; then
        "${PYTHON}" "${REPO_ROOT}/tools/prepare_default_corpus.py"
        DEMO_FLAGS=(--config "${REPO_ROOT}/ALCF/presets/demo.yaml" --launcher-default load=auto)
        FLAG_SOURCES+=("no DATA_FILE_LIST, MODEL_ARCH or --config -> the demo (--config ALCF/presets/demo.yaml)")
        return 0
    fi
    # load=auto: a relaunch of the same command resumes from its own --save (a finished run says
    # so and exits 0); LOAD or --load names another checkpoint.
    DEMO_FLAGS=(--launcher-default save=auto --launcher-default load=auto)
    if [[ -n "${NO_TENSORBOARD:-}" ]]; then
        FLAG_SOURCES+=("NO_TENSORBOARD=${NO_TENSORBOARD} -> no TensorBoard directory unless TBDIR / --tensorboard-dir")
    else
        DEMO_FLAGS+=(--launcher-default tensorboard_dir=auto)
    fi
    if [[ -z "${DTYPE:-}" ]] && _accelerator_has_bf16; then
        DEMO_FLAGS+=(--launcher-default bf16=true)
        FLAG_SOURCES+=("no DTYPE on a bf16 accelerator -> --bf16 (train_alcf.sh default; DTYPE=fp32 to turn off)")
    fi
}

print_command() {
    local line source
    printf '[train_alcf.sh] environment -> flags:\n'
    for source in "${FLAG_SOURCES[@]+"${FLAG_SOURCES[@]}"}"; do
        printf '    %s\n' "${source}"
    done
    printf -v line '%q ' "$@"
    printf '[train_alcf.sh] command: %s\n' "${line% }"
}

# continual_main: CPT_PLAN=plan.yaml runs a continual-pretraining plan (tools/continual_run.py),
# whose stages come back through this launcher (with CPT_PLAN emptied). Paths in the plan are
# taken from the directory you start from; DRY_RUN=1 checks the plan and starts nothing.
continual_main() {
    setup_python "${REPO_ROOT}"
    local extra=()
    [[ "${DRY_RUN:-0}" == "0" ]] || extra=(--dry-run)
    exec "${PYTHON}" -W ignore "${REPO_ROOT}/tools/continual_run.py" --plan "${CPT_PLAN}" "${extra[@]+"${extra[@]}"}" "$@"
}

train_main() {
    [[ -z "${CPT_PLAN:-}" ]] || continual_main "$@"
    cd "${REPO_ROOT}" || _die "cannot enter ${REPO_ROOT}"
    setup_python "${REPO_ROOT}"
    env_to_flags
    demo_flags "$@"
    detect_topology
    launch_command
    if ! command -v nvidia-smi >/dev/null 2>&1 && ! command -v xpu-smi >/dev/null 2>&1; then
        # CPU processes share the cores; without this each one would start a thread per core.
        local cores
        cores="$(nproc 2>/dev/null || printf '2')"
        export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(((cores + RANKS_PER_HOST - 1) / RANKS_PER_HOST))}"
        export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
    fi
    print_topology
    # The demo preset first (flags override a --config file), then the variables', then the
    # user's own. A variable and a flag that disagree are an error (pretrain_gpt.py names both).
    local cmd=("${LAUNCH[@]}" "${REPO_ROOT}/pretrain_gpt.py" "${DEMO_FLAGS[@]+"${DEMO_FLAGS[@]}"}" "${FLAGS[@]+"${FLAGS[@]}"}" "$@")
    print_command "${cmd[@]}"
    # Validate before starting any process group: a bad value stops here, naming the flag.
    if ! WORLD_SIZE="${WORLD_SIZE_PLANNED}" RANK=0 "${PYTHON}" -W ignore "${REPO_ROOT}/pretrain_gpt.py" "${DEMO_FLAGS[@]+"${DEMO_FLAGS[@]}"}" "${FLAGS[@]+"${FLAGS[@]}"}" "$@" --dry-run >/dev/null; then
        if [[ "${DEMO_FLAGS[*]-}" != *demo.yaml* && -z "${DATA_FILE_LIST:-}" ]]; then
            printf 'train_alcf.sh: note: the demo preset applies only to the no-argument demo; with MODEL_ARCH or --config give the data (DATA_FILE_LIST) and run length (TRAIN_ITERS / TRAIN_TOKENS) too\n' >&2
        fi
        _die "the configuration above was rejected (see the message; variables map to flags as listed)"
    fi
    if [[ "${DRY_RUN:-0}" != "0" ]]; then
        WORLD_SIZE="${WORLD_SIZE_PLANNED}" RANK=0 "${PYTHON}" -W ignore "${REPO_ROOT}/pretrain_gpt.py" "${DEMO_FLAGS[@]+"${DEMO_FLAGS[@]}"}" "${FLAGS[@]+"${FLAGS[@]}"}" "$@" --dry-run
        return 0
    fi
    exec "${cmd[@]}"
}
