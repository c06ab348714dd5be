# shellcheck shell=bash
# Topology detection and the launch line: PBS (mpiexec), Slurm (srun) or local (torchrun).
#
# detect_topology sets:
#   SCHEDULER      pbs | slurm | local
#   NHOSTS         nodes in the job
#   RANKS_PER_HOST processes per node (NGPU_PER_HOST overrides; else the scheduler's GPU count,
#                  the NVIDIA GPUs or Intel XPUs present, else NPROC CPU processes, default 1)
#   WORLD_SIZE_PLANNED = NHOSTS * RANKS_PER_HOST
#   MASTER_ADDR / MASTER_PORT (exported; the first host of the job, port 29500 by default)

_count_devices() {
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        nvidia-smi -L | grep -c '^GPU'
    elif command -v xpu-smi >/dev/null 2>&1 && xpu-smi discovery >/dev/null 2>&1; then
        xpu-smi discovery | grep -c 'Device ID'
    else
        printf '%s\n' "${NPROC:-1}"
    fi
}

# _first_slurm_host NODELIST: "nid[0012-0015,0020]" -> nid0012, "a1,a2" -> a1.
_first_slurm_host() {
    local list="$1" prefix rest first
    if [[ "${list}" == *"["* ]]; then
        prefix="${list%%[*}"
        rest="${list#*[}"
        first="${rest%%[],-]*}"
        printf '%s%s\n' "${prefix}" "${first}"
    else
        printf '%s\n' "${list%%,*}"
    fi
}

detect_topology() {
    if [[ -n "${PBS_NODEFILE:-}" ]]; then
        [[ -r "${PBS_NODEFILE}" ]] || _die "PBS_NODEFILE=${PBS_NODEFILE} is not readable"
        SCHEDULER=pbs
        NHOSTS="$(sort -u "${PBS_NODEFILE}" | grep -c .)"
        MASTER_ADDR="${MASTER_ADDR:-$(head -n 1 "${PBS_NODEFILE}")}"
        RANKS_PER_HOST="${NGPU_PER_HOST:-$(_count_devices)}"
    elif [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
        SCHEDULER=slurm
        NHOSTS="${SLURM_NNODES:-1}"
        if [[ -z "${MASTER_ADDR:-}" ]]; then
            if command -v scontrol >/dev/null 2>&1; then
                MASTER_ADDR="$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)"
            else
                MASTER_ADDR="$(_first_slurm_host "${SLURM_JOB_NODELIST}")"
            fi
        fi
        RANKS_PER_HOST="${NGPU_PER_HOST:-${SLURM_GPUS_ON_NODE:-$(_count_devices)}}"
    elif [[ -n "${NUM_NODES:-}" && "${NUM_NODES}" != 1 ]]; then
        # No scheduler, several nodes (TiC-LM's --multi-node): the same command on every node
        # with NUM_NODES, NODE_RANK and MASTER_ADDR set; torchrun joins them.
        [[ "${NUM_NODES}" =~ ^[1-9][0-9]*$ ]] || _die "NUM_NODES=${NUM_NODES}: expected a node count"
        [[ -n "${MASTER_ADDR:-}" ]] || _die "NUM_NODES=${NUM_NODES}: set MASTER_ADDR (the address of node 0) on every node"
        [[ "${NODE_RANK:-0}" =~ ^[0-9]+$ && "${NODE_RANK:-0}" -lt "${NUM_NODES}" ]] ||
            _die "NODE_RANK=${NODE_RANK:-}: expected 0..$((NUM_NODES - 1))"
        SCHEDULER=nodes
        NHOSTS="${NUM_NODES}"
        RANKS_PER_HOST="${NGPU_PER_HOST:-$(_count_devices)}"
    else
        SCHEDULER=local
        NHOSTS=1
        RANKS_PER_HOST="${NGPU_PER_HOST:-$(_count_devices)}"
    fi
    [[ "${RANKS_PER_HOST}" =~ ^[1-9][0-9]*$ ]] || _die "ranks per node '${RANKS_PER_HOST}' is not a positive integer (NGPU_PER_HOST / NPROC)"
    WORLD_SIZE_PLANNED=$((NHOSTS * RANKS_PER_HOST))
    export MASTER_PORT="${MASTER_PORT:-29500}"
    [[ -z "${MASTER_ADDR:-}" ]] || export MASTER_ADDR
}

# launch_command: fills LAUNCH (the command that starts WORLD_SIZE_PLANNED python processes).
# shellcheck disable=SC2034  # LAUNCH is read by the caller
launch_command() {
    case "${SCHEDULER}" in
        pbs)
            local depth=$(( $(nproc 2>/dev/null || printf '8') / RANKS_PER_HOST ))
            ((depth > 0)) || depth=1
            LAUNCH=(mpiexec --envall -n "${WORLD_SIZE_PLANNED}" -ppn "${RANKS_PER_HOST}"
                --hostfile "${PBS_NODEFILE}" --cpu-bind depth -d "${depth}" "${PYTHON}")
            ;;
        slurm)
            LAUNCH=(srun --nodes "${NHOSTS}" --ntasks "${WORLD_SIZE_PLANNED}"
                --ntasks-per-node "${RANKS_PER_HOST}" --kill-on-bad-exit=1 "${PYTHON}")
            ;;
        nodes)
            LAUNCH=("${PYTHON}" -m torch.distributed.run --nnodes "${NHOSTS}" --node-rank "${NODE_RANK:-0}"
                --nproc-per-node "${RANKS_PER_HOST}" --master-addr "${MASTER_ADDR}"
                --master-port "${MASTER_PORT}")
            ;;
        *)
            if ((WORLD_SIZE_PLANNED <= 1)); then
                LAUNCH=("${PYTHON}")
            else
                LAUNCH=("${PYTHON}" -m torch.distributed.run --standalone
                    --nproc-per-node "${RANKS_PER_HOST}")
            fi
            ;;
    esac
}

print_topology() {
    printf '[train_alcf.sh] topology: %s, %s node(s) x %s rank(s) = world size %s, master %s:%s\n' \
        "${SCHEDULER}" "${NHOSTS}" "${RANKS_PER_HOST}" "${WORLD_SIZE_PLANNED}" \
        "${MASTER_ADDR:-localhost}" "${MASTER_PORT}"
}
