"""The argonne fork's and TiC-LM's spellings of our flags and values (docs/compatibility.md).

Registered into the tables of ``compat_registry.py`` when ``compat.py`` imports it: the fork's optimizer names (aliases
of the same update, or refused with the reason), the flags its launcher passes, and TiC-LM's
continual-run flags given to the trainer.
"""

from __future__ import annotations

from megatron.config.compat_registry import REFUSED_VALUES, VALUE_ALIASES, mapped, no_op, refuse

VALUE_ALIASES["--optimizer"] = {
    # The argonne fork's names for updates we have (docs/compatibility.md says which).
    "sophiag": "sophia",  # Sophia-G: clipped m / max(rho * h, eps), Gauss-Newton-Bartlett h
    "adamwschedulefree": "schedulefree",  # schedulefree.AdamWScheduleFree, the same package
    "dshampooadamw": "dshampoo",  # block-diagonal Shampoo with Adam grafting
}

_USE_ADAMW = "; use --optimizer adamw"
REFUSED_VALUES["--optimizer"] = {
    "ipex.lamb": "Intel Extension for PyTorch's LAMB (XPU kernels; intel_extension_for_pytorch is not "
                 "a dependency); --optimizer lamb is pytorch-optimizer's LAMB, whose weight decay is "
                 "decoupled from the trust ratio instead of added to the update before it",
    "ipex.fusedlamb": "Intel Extension for PyTorch's fused LAMB (XPU kernels; intel_extension_for_pytorch "
                      "is not a dependency); use --optimizer lamb (pytorch-optimizer's LAMB, weight "
                      "decay decoupled from the trust ratio)",
    "ds.fusedlamb": "DeepSpeed's fused LAMB is a CUDA-only op that clamps the trust ratio to "
                    "[0.01, 10]; use --optimizer lamb (pytorch-optimizer's LAMB, CPU and GPU)",
    "muonclip": "MuonClip's QK-clip rescales W_q/W_k by each head's largest attention logit, which "
                "SDPA does not return; use --optimizer muon",
    "galoreadamw": "GaLore (pytorch-optimizer) keeps a Python projector object in the optimizer "
                   "state, which checkpoints loaded with weights_only cannot restore" + _USE_ADAMW,
    "galore_adamw": "GaLore (pytorch-optimizer) keeps a Python projector object in the optimizer "
                    "state, which checkpoints loaded with weights_only cannot restore" + _USE_ADAMW,
    "adam8bit": "bitsandbytes' 8-bit Adam runs CUDA kernels and bitsandbytes is not a dependency; "
                "use --optimizer adamw (and --cpu-optimizer to move the states off the GPU)",
}


# TiC-LM's continual-run flags given to the trainer: they belong to the stage runner.
for _flag, _nargs in (("--try-balanced-manifest", 0), ("--suffixes", "*")):
    refuse(
        _flag,
        "a TiC-LM continual-run flag, supported by tools/continual_run.py (CPT_PLAN=plan.yaml bash "
        "train_alcf.sh), not by the trainer",
        nargs=_nargs,
    )

# ---- the argonne fork's own flags (its ALCF/helpers.sh passes them) --------------------------


@mapped("--use-flash-attn-builder", "--use-flash-attn (SDPA's flash kernel; an error where it cannot run)", nargs=0)
def _flash_builder(values: list[str], argv: list[str]) -> list[str]:
    return ["--use-flash-attn"]


@mapped("--rotary-position-embeddings-theta", "--rotary-base (the RoPE base theta)")
def _rope_theta(values: list[str], argv: list[str]) -> list[str]:
    return ["--rotary-base", values[0]]


no_op(
    "--shuffle-sample-in-corpus",
    "a corpus's files are interleaved by weight in a low-discrepancy order and each file's samples "
    "are reshuffled every epoch; the fork's extra shuffle of which file each position draws from is "
    "not applied (same proportions, another order)",
)
no_op("--blend-sample-in-corpus", "a corpus's files are always blended by weight (never concatenated)")
no_op(
    "--timing-log-level",
    "our step timers (data, forward, backward, optimizer) have no levels; "
    "--log-timers-to-tensorboard writes them",
    nargs=1,
)
