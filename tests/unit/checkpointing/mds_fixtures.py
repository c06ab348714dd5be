"""A tiny Hugging Face Llama written in the argonne-lcf Megatron-DeepSpeed fork's checkpoint layouts.

Written from the fork's code, independently of our import code: ``mds_to_hf.py`` (fused QKV
``[kv_heads, (q_per_kv + 2) * head_dim, hidden]``, ``dense_h_to_4h = [gate; up]``), its
``ColumnParallelLinear``/``RowParallelLinear`` sharding (each TP rank's fc1 is ``[gate_r; up_r]``),
``GPTModel.state_dict_for_save_checkpoint`` (nested ``language_model`` dicts), ``GPTModelPipe``'s
layer list (0 a cast function, 1 the embedding, 2..L+1 the layers, L+2 the final norm, L+3 the
head) and DeepSpeed's file names (``mp_rank_XX``, ``layer_JJ-model_TT``, ``bf16_zero_pp_rank_D``,
``zero/<name>/fp32.pt``).
"""

from __future__ import annotations

import argparse
import os
import random
from collections import OrderedDict

import numpy as np
import torch

VOCAB, PADDED, MULTIPLE = 60, 64, 32
STEP = 7


def tiny_llama(seed: int = 0):  # noqa: ANN201  (a transformers LlamaForCausalLM)
    """A random GQA SwiGLU RMSNorm untied Llama (2 layers, hidden 32, head_dim 8), fp32."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=500.0, tie_word_embeddings=False, initializer_range=0.2,
        attention_bias=False, mlp_bias=False,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norm weights
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return model


def fork_args(model, tp: int = 1, pp: int = 1, **overrides) -> argparse.Namespace:  # noqa: ANN001
    """The fork's saved ``args`` for the Llama ``model``."""
    c = model.config
    values = dict(
        num_layers=c.num_hidden_layers, hidden_size=c.hidden_size, ffn_hidden_size=c.intermediate_size,
        num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
        kv_channels=c.head_dim, max_position_embeddings=c.max_position_embeddings, seq_length=32,
        padded_vocab_size=PADDED, make_vocab_size_divisible_by=MULTIPLE // tp,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        use_rotary_position_embeddings=True, add_position_embedding=False, rope_theta=500,
        rotary_percent=1.0, normalization="rmsnorm", layernorm_epsilon=c.rms_norm_eps, swiglu=True,
        add_bias_linear=False, untie_embeddings_and_output_weights=True, num_experts=[1],
        apply_layernorm_1p=False, openai_gelu=False, squared_relu=False,
        tokenizer_type="Llama2Tokenizer", tokenizer_model="meta-llama/Llama-2-7b-hf",
        params_dtype=torch.bfloat16, bf16=True, fp16=False, deepspeed_config_dict={"zero_optimization": {"stage": 1}},
    )
    values.update(overrides)
    return argparse.Namespace(**values)


def fork_full(model) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """GPTModel parameter name -> full (TP=1) tensor in the fork's layout, vocabulary padded."""
    c, sd = model.config, model.state_dict()
    kv, hd, d = c.num_key_value_heads, c.head_dim, c.hidden_size
    group = c.num_attention_heads // kv
    gen = torch.Generator().manual_seed(1)

    def padded(t: torch.Tensor) -> torch.Tensor:  # the fork's padded rows are trained rows too
        return torch.cat([t, torch.randn(PADDED - VOCAB, d, generator=gen)])

    out = {"language_model.embedding.word_embeddings.weight": padded(sd["model.embed_tokens.weight"])}
    for i in range(c.num_hidden_layers):
        hf, p = f"model.layers.{i}", f"language_model.encoder.layers.{i}"
        q = sd[f"{hf}.self_attn.q_proj.weight"].view(kv, group * hd, d)
        k = sd[f"{hf}.self_attn.k_proj.weight"].view(kv, hd, d)
        v = sd[f"{hf}.self_attn.v_proj.weight"].view(kv, hd, d)
        out[f"{p}.input_layernorm.weight"] = sd[f"{hf}.input_layernorm.weight"]
        out[f"{p}.self_attention.query_key_value.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, d)
        out[f"{p}.self_attention.dense.weight"] = sd[f"{hf}.self_attn.o_proj.weight"]
        out[f"{p}.post_attention_layernorm.weight"] = sd[f"{hf}.post_attention_layernorm.weight"]
        out[f"{p}.mlp.dense_h_to_4h.weight"] = torch.cat([sd[f"{hf}.mlp.gate_proj.weight"],
                                                           sd[f"{hf}.mlp.up_proj.weight"]])
        out[f"{p}.mlp.dense_4h_to_h.weight"] = sd[f"{hf}.mlp.down_proj.weight"]
    out["language_model.encoder.final_layernorm.weight"] = sd["model.norm.weight"]
    out["language_model.output_layer.weight"] = padded(sd["lm_head.weight"])
    return {k: v.clone().float() for k, v in out.items()}


def shard(name: str, full: torch.Tensor, tp: int, rank: int, swiglu: bool = True) -> torch.Tensor:
    """TP rank ``rank``'s slice, as the fork's parallel layers hold it."""
    if tp == 1 or "layernorm" in name or "position_embeddings" in name:
        return full
    if name.endswith(("self_attention.dense.bias", "dense_4h_to_h.bias")):
        return full  # RowParallelLinear adds its bias after the all-reduce: every rank has it all
    if name.endswith(("self_attention.dense.weight", "dense_4h_to_h.weight")):
        return full.chunk(tp, dim=1)[rank].clone()  # RowParallelLinear
    if swiglu and "dense_h_to_4h" in name:  # each rank's output chunk(2) is [gate_r; up_r]
        gate, up = full.chunk(2)
        return torch.cat([gate.chunk(tp)[rank], up.chunk(tp)[rank]])
    return full.chunk(tp, dim=0)[rank].clone()  # ColumnParallelLinear / VocabParallelEmbedding


def pipe_name(name: str, num_layers: int, tied: bool = False) -> str:
    """``GPTModelPipe``'s name of a ``GPTModel`` parameter (a tied embedding is a tied module)."""
    if name.startswith("language_model.embedding."):
        return ("tied_modules.embed." if tied else "1.") + name[len("language_model.embedding."):]
    if name.startswith("language_model.encoder.layers."):
        i, _, rest = name[len("language_model.encoder.layers."):].partition(".")
        return f"{2 + int(i)}.{rest}"
    if name.startswith("language_model.encoder.final_layernorm."):
        return f"{num_layers + 2}.{name.rsplit('.', 1)[1]}"
    return f"{num_layers + 3}.lm_head.weight"


def ours_full(model) -> dict[str, torch.Tensor]:  # noqa: ANN001  (our GPTModel at TP=1)
    """Our GPT's parameters under the fork's ``GPTModel`` names (the layouts are the same)."""
    out = {}
    for name, p in model.named_parameters():
        head, _, rest = name.partition(".")
        fork = {"embedding": f"language_model.embedding.{rest}", "layers": f"language_model.encoder.layers.{rest}",
                "final_norm": f"language_model.encoder.{rest}", "output": "language_model.output_layer.weight"}[head]
        out[fork] = p.detach().clone()
    return out


def ours_args(spec, tp: int, pp: int) -> argparse.Namespace:  # noqa: ANN001  (a GPTSpec)
    """The fork's ``args`` for our model ``spec`` (vocabulary already padded)."""
    return argparse.Namespace(
        num_layers=spec.num_layers, hidden_size=spec.hidden_size, ffn_hidden_size=spec.ffn_hidden_size,
        num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.num_key_value_heads,
        kv_channels=spec.head_dim, max_position_embeddings=spec.max_position_embeddings,
        seq_length=spec.seq_length, padded_vocab_size=spec.vocab_size, make_vocab_size_divisible_by=MULTIPLE // tp,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        use_rotary_position_embeddings=spec.position_embedding == "rope",
        add_position_embedding=spec.position_embedding == "learned", rope_theta=int(spec.rotary_base),
        normalization=spec.normalization, layernorm_epsilon=spec.norm_epsilon, swiglu=spec.swiglu,
        add_bias_linear=spec.bias, untie_embeddings_and_output_weights=not spec.tie_embeddings,
        tokenizer_type="GPT2BPETokenizer", vocab_file="gpt2-vocab.json", params_dtype=torch.float32,
    )


def _common(args: argparse.Namespace, shapes: dict[str, torch.Size], dp: int) -> dict:
    """What DeepSpeed and the fork put in every ``mp_rank_XX_model_states.pt`` besides the module."""
    return {
        "args": args, "checkpoint_version": 3.0, "iteration": STEP, "tokens": STEP * 64,
        "rng_state": [{"random_rng_state": random.getstate(), "np_rng_state": np.random.get_state(),
                       "torch_rng_state": torch.get_rng_state(), "rng_tracker_states": {}}],
        "universal_checkpoint_info": {"universal_checkpoint_version": 0.2},
        "buffer_names": [], "optimizer": None, "param_shapes": [OrderedDict(shapes)],
        "frozen_param_shapes": None, "shared_params": {}, "frozen_param_fragments": None,
        "lr_scheduler": {"num_steps": STEP}, "data_sampler": None, "random_ltd": None,
        "sparse_tensor_module_names": set(), "skipped_steps": 0, "global_steps": STEP,
        "global_samples": STEP * 8, "dp_world_size": dp, "mp_world_size": args.tensor_model_parallel_size,
        "ds_config": {"train_batch_size": 8, "bf16": {"enabled": True}}, "ds_version": "0.14.0",
    }


def _nest(flat: dict[str, torch.Tensor]) -> dict:
    """``GPTModel.state_dict_for_save_checkpoint``: embedding / encoder / output_layer dicts."""
    lm: dict = {"embedding": {}, "encoder": {}, "output_layer": {}}
    for name, t in flat.items():
        rest = name[len("language_model."):]
        if rest.startswith("encoder."):
            lm["encoder"][rest[len("encoder."):]] = t
        elif rest.startswith("embedding."):
            module, key = rest[len("embedding."):].split(".")
            lm["embedding"].setdefault(module, {})[key] = t
        else:
            lm["output_layer"]["weight"] = t
    return {"language_model": lm}


def write_zero(step_dir: str, mp: int, params: dict[str, torch.Tensor], moments: dict[str, dict], dp: int) -> None:
    """``bf16_zero_pp_rank_{d}_mp_rank_{mp}`` files: one flat fp32 group split over ``dp`` ranks."""
    from deepspeed.utils.tensor_fragment import fragment_address

    names = list(params)
    flats = {k: torch.cat([(params[n] if k == "fp32" else moments[k][n]).reshape(-1) for n in names])
             for k in ("fp32", "exp_avg", "exp_avg_sq")}
    total = flats["fp32"].numel()
    part = -(-total // dp)
    flats = {k: torch.cat([v, v.new_zeros(part * dp - total)]) for k, v in flats.items()}
    for d in range(dp):
        lo, hi = d * part, (d + 1) * part
        mapping, offset = OrderedDict(), 0
        for n in names:
            start, end = max(offset, lo), min(offset + params[n].numel(), hi)
            if start < end:
                mapping[n] = fragment_address(numel=end - start, start=start - lo)
            offset += params[n].numel()
        sd = {
            "base_optimizer_state": {"state": {0: {"step": torch.tensor(float(STEP)),
                                                   "exp_avg": flats["exp_avg"][lo:hi].clone(),
                                                   "exp_avg_sq": flats["exp_avg_sq"][lo:hi].clone()}},
                                     "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "params": [0]}]},
            "single_partition_of_fp32_groups": [flats["fp32"][lo:hi].clone()],
            "param_slice_mappings": [mapping], "group_paddings": [part * dp - total],
            "partition_count": [dp], "clip_grad": 1.0, "ds_version": "0.14.0",
        }
        torch.save({"optimizer_state_dict": sd, "ds_config": {}, "ds_version": "0.14.0"},
                   os.path.join(step_dir, f"bf16_zero_pp_rank_{d}_mp_rank_{mp:02d}_optim_states.pt"))


def random_moments(full: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Full ``exp_avg`` / ``exp_avg_sq`` per GPTModel parameter."""
    gen = torch.Generator().manual_seed(2)
    return {"exp_avg": {n: torch.randn(t.shape, generator=gen) for n, t in full.items()},
            "exp_avg_sq": {n: torch.rand(t.shape, generator=gen) for n, t in full.items()}}


def _finish(root: str, tag: str) -> str:
    with open(os.path.join(root, "latest"), "w") as f:
        f.write(tag)
    with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write(str(STEP))
    return root


def write_dense(root: str, model, tp: int = 1, *, moments: dict | None = None, dp: int = 2,  # noqa: ANN001
                args: argparse.Namespace | None = None, full: dict | None = None) -> str:
    """``GPTModel`` checkpoint: ``global_step7/mp_rank_XX_model_states.pt`` (+ ZeRO files with
    ``moments``, the module weights then rounded to bf16 as a bf16 run keeps them)."""
    step_dir = os.path.join(root, f"global_step{STEP}")
    os.makedirs(step_dir)
    args = args or fork_args(model, tp)
    full = full if full is not None else fork_full(model)
    for t in range(tp):
        local = {n: shard(n, w, tp, t, args.swiglu) for n, w in full.items()}
        module = {n: (w.bfloat16() if moments else w) for n, w in local.items()}
        state = {"module": _nest(module), **_common(args, {n: w.shape for n, w in local.items()}, dp)}
        torch.save(state, os.path.join(step_dir, f"mp_rank_{t:02d}_model_states.pt"))
        if moments:
            local_moments = {k: {n: shard(n, m, tp, t, args.swiglu) for n, m in v.items()} for k, v in moments.items()}
            write_zero(step_dir, t, local, local_moments, dp)
    return _finish(root, f"global_step{STEP}")


def write_pipe(root: str, model, tp: int = 2, pp: int = 2, *, moments: dict | None = None,  # noqa: ANN001
               args: argparse.Namespace | None = None, full: dict | None = None) -> str:
    """``GPTModelPipe`` checkpoint: one ``layer_JJ-model_TT-model_states.pt`` per layer and TP
    rank, and an args-only ``mp_rank_XX_model_states.pt`` per (stage, TP rank); with ``moments``
    bf16 layer files and each stage's ZeRO files (model-parallel rank ``stage * tp + t``)."""
    step_dir = os.path.join(root, f"global_step{STEP}")
    os.makedirs(step_dir)
    args = args or fork_args(model, tp, pp)
    L, tied = args.num_layers, not args.untie_embeddings_and_output_weights
    full = full if full is not None else fork_full(model)
    for t in range(tp):
        layers: dict[int, dict[str, torch.Tensor]] = {}
        stages: list[dict[str, torch.Tensor]] = [{} for _ in range(pp)]
        for n, w in full.items():
            name = pipe_name(n, L, tied)
            if name.startswith("tied_modules.embed."):  # EmbeddingPipe at layer 1 and again for the head
                key, index = name[len("tied_modules.embed."):], "1"
                layers.setdefault(L + 3, {})[key] = shard(n, w, tp, t, args.swiglu)
            else:
                index, _, key = name.partition(".")
            local = shard(n, w, tp, t, args.swiglu)
            layers.setdefault(int(index), {})[key] = local.bfloat16() if moments else local
            stages[min(pp - 1, max(0, int(index) - 2) * pp // L)][name] = local  # layers split evenly
        for j, sd in layers.items():
            torch.save(sd, os.path.join(step_dir, f"layer_{j:02d}-model_{t:02d}-model_states.pt"))
        for stage, params in enumerate(stages if moments else []):
            dense = {pipe_name(n, L, tied): n for n in full}
            local_moments = {k: {p: shard(dense[p], v[dense[p]], tp, t, args.swiglu) for p in params}
                             for k, v in moments.items()}
            write_zero(step_dir, stage * tp + t, params, local_moments, 2)
    for stage in range(pp):
        for t in range(tp):
            state = {**_common(args, {}, 1), "module": None}
            torch.save(state, os.path.join(step_dir, f"mp_rank_{stage * tp + t:02d}_model_states.pt"))
    return _finish(root, f"global_step{STEP}")


def write_universal(root: str, model, *, moments: dict | None = None, pipe: bool = True,  # noqa: ANN001
                    args: argparse.Namespace | None = None, full: dict | None = None) -> str:
    """DeepSpeed universal checkpoint ``global_step7_universal/zero/<name>/{fp32,exp_avg,exp_avg_sq,step}.pt``
    (vocabulary tensors stripped of their padding, as ``ds_to_universal`` does), ``latest_universal``."""
    step_dir = os.path.join(root, f"global_step{STEP}_universal")
    args = args or fork_args(model, 2, 2 if pipe else 1)
    full = full if full is not None else fork_full(model)
    tied = not args.untie_embeddings_and_output_weights
    for n, w in full.items():
        name = pipe_name(n, args.num_layers, tied) if pipe else n
        os.makedirs(os.path.join(step_dir, "zero", name))
        vocab = "word_embeddings" in n or "output_layer" in n
        states = [("fp32", w)] + [(k, moments[k][n]) for k in ("exp_avg", "exp_avg_sq") if moments]
        for key, value in states:
            record = {"param": value[:VOCAB].clone() if vocab else value, "cat_dim": 0}
            if vocab:
                record["vocab_tensor"] = True
            torch.save(record, os.path.join(step_dir, "zero", name, f"{key}.pt"))
        torch.save(torch.tensor(float(STEP)), os.path.join(step_dir, "zero", name, "step.pt"))
    torch.save({**_common(args, {}, 1), "module": None}, os.path.join(step_dir, "mp_rank_00_model_states.pt"))
    with open(os.path.join(root, "latest_universal"), "w") as f:
        f.write(f"global_step{STEP}_universal")
    return root
