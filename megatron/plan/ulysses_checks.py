"""The plan's checks of DeepSpeed-Ulysses (``--ds-sequence-parallel-size N``, launcher ``SP=N``).

Each of the N ranks of a sequence-parallel group holds ``seq / N`` positions; attention
exchanges them for ``heads / N`` heads of the whole sequence (docs/long_sequences.md). What the
implementation cannot honour is refused here, before any process group starts, naming the flags.
"""

from __future__ import annotations

from megatron.config.fields import ConfigError
from megatron.config.root import Config
from megatron.optimizer.registry import OptimizerSpec

FLAG = "--ds-sequence-parallel-size"


def _refuse_layout(cfg: Config, world_size: int, sp: int) -> None:
    par, m = cfg.parallel, cfg.model
    tp, pp = par.tensor_model_parallel_size, par.pipeline_model_parallel_size
    if world_size % (tp * pp * sp):
        raise ConfigError(
            f"{FLAG}: TP {tp} x PP {pp} x SP {sp} = {tp * pp * sp} does not divide the world size "
            f"{world_size}; the world is TP x PP x SP x DP"
        )
    for value, flag in ((m.num_attention_heads, "--num-attention-heads"), (m.kv_heads, "--num-key-value-heads")):
        if value % (tp * sp):
            raise ConfigError(
                f"{FLAG}: {flag} {value} is not divisible by --tensor-model-parallel-size {tp} x "
                f"{FLAG} {sp} = {tp * sp} (each rank attends over heads / (TP x SP)); pick sizes "
                "that divide the heads"
            )
    if m.seq_length % sp:
        raise ConfigError(
            f"{FLAG}: --seq-length {m.seq_length} is not divisible by {FLAG} {sp} (each rank "
            "holds seq / SP positions)"
        )


def _refuse_combinations(cfg: Config, sp: int, spec: OptimizerSpec) -> None:
    par = cfg.parallel
    refused = (
        (par.pipeline_model_parallel_size > 1, "--pipeline-model-parallel-size",
         f"{par.pipeline_model_parallel_size} (Ulysses runs with PP=1; use TP or more SP ranks)"),
        (par.sequence_parallel, "--sequence-parallel",
         "(Megatron SP and Ulysses together are not supported; use one of them)"),
        (par.zero_stage == 3, "--zero-stage", "3 (supported: ZeRO 0-2)"),
        (cfg.train.compile, "--compile", "(the attention all-to-all is not traced; run eager)"),
        (cfg.model.hidden_dropout > 0 or cfg.model.attention_dropout > 0, "--hidden-dropout/--attention-dropout",
         "> 0 (every SP rank would draw the same masks for its positions and heads; use 0)"),
        (cfg.regularize.ewc or cfg.regularize.lwf, "--ewc-weight/--lwf-weight",
         "(their extra forwards read whole sequences; train without them or at SP=1)"),
    )  # fmt: skip
    for bad, flag, why in refused:
        if bad:
            raise ConfigError(f"{FLAG} {sp}: cannot be combined with {flag} {why}")
    if spec.param_policy == "matrix" or spec.before_step is not None or spec.after_initialize is not None:
        raise ConfigError(
            f"{FLAG} {sp}: cannot be combined with --optimizer {spec.name} (its extra passes or "
            "matrix reassembly span the data-parallel group only); use an element-wise optimizer "
            "such as adamw"
        )


def check_ulysses(cfg: Config, world_size: int, optimizer: OptimizerSpec) -> int:
    """The Ulysses size of this run (1 = off), after refusing what it cannot run
    (``optimizer``: the plan's ``--optimizer`` entry).

    Raises:
        ConfigError: Sizes that do not divide, or an unsupported combination, naming the flags.
    """
    sp = cfg.parallel.ds_sequence_parallel_size
    if sp == 1:
        return 1
    _refuse_layout(cfg, world_size, sp)
    _refuse_combinations(cfg, sp, optimizer)
    return sp
