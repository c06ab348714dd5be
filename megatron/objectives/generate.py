"""Text generation from a checkpoint of either objective (``tools/generate.py``).

The checkpoint's metadata says which objective trained it (``--objective``, and the model's
``causal`` flag); sampling a masked-diffusion model left to right, or the reverse, would produce
text that says nothing about the model, so a mismatch with the requested objective is an error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from megatron.checkpointing.hf_export import open_checkpoint
from megatron.checkpointing.universal import load_weights
from megatron.config.data import DataConfig
from megatron.config.fields import ConfigError, flag_name
from megatron.data.tokenizers import Tokenizer, build_tokenizer
from megatron.model.gpt import GPTModel
from megatron.model.spec import GPTSpec
from megatron.objectives.sampling import ar_sample, mdm_sample


def checkpoint_objective(metadata: dict[str, Any]) -> str:
    """``ar`` or ``mdm``: the saved ``--objective`` (checkpoints from before it existed: ``ar``)."""
    return (metadata.get("config") or {}).get("--objective", "ar")


def check_objective(metadata: dict[str, Any], requested: str | None, where: str) -> str:
    """The checkpoint's objective; raises ``ConfigError`` when ``requested`` differs."""
    saved = checkpoint_objective(metadata)
    if requested is not None and requested != saved:
        raise ConfigError(
            f"--objective: {where} was trained with --objective {saved}, not {requested}; "
            f"sample it with --objective {saved} (or drop --objective: it is read from the checkpoint)"
        )
    return saved


def saved_data_config(metadata: dict[str, Any]) -> DataConfig:
    """The run's tokenizer settings, rebuilt from the checkpoint's flat config."""
    config = metadata.get("config") or {}
    keys = ("tokenizer_type", "tokenizer_model", "vocab_file", "merge_file", "vocab_size")
    values = {k: config[flag_name(k)] for k in keys if flag_name(k) in config}
    known = {f.name for f in dataclasses.fields(DataConfig)}
    return DataConfig(**{k: v for k, v in values.items() if k in known}, mock_data=True)


@dataclass
class Generator:
    """A loaded checkpoint ready to sample (TP=1, CPU, eval mode).

    Attributes:
        model: The GPT with the checkpoint's weights.
        spec: Its shape.
        objective: ``ar`` or ``mdm``.
        mask_id: The mask token (mdm) or None.
        tokenizer: The run's tokenizer.
    """

    model: GPTModel
    spec: GPTSpec
    objective: str
    mask_id: int | None
    tokenizer: Tokenizer

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits of ``tokens`` ``[b, s]``."""
        return self.model(tokens)

    def sample(self, prompt: list[int], *, gen_length: int, num_samples: int = 1, seed: int = 0,
               **options: Any) -> list[list[int]]:
        """``num_samples`` continuations (generated ids only) of ``prompt``.

        ``options`` go to ``mdm_sample`` (steps, alg, temperature, cfg_scale, eps) or, for
        ``ar``, ``ar_sample`` (temperature).
        """
        if not prompt and self.objective == "ar":
            # A left-to-right model needs a first token: end-of-document starts a new one.
            eod = self.tokenizer.eod
            prompt = [eod if eod < self.spec.original_vocab_size else 0]
        if len(prompt) + gen_length > self.spec.max_position_embeddings:
            raise ConfigError(
                f"--gen-length: prompt ({len(prompt)} tokens) + {gen_length} exceeds the model's "
                f"{self.spec.max_position_embeddings} positions; shorten one of them"
            )
        x = torch.tensor([prompt] * num_samples, dtype=torch.long).reshape(num_samples, len(prompt))
        g = torch.Generator().manual_seed(seed)
        limit = self.spec.original_vocab_size
        if self.objective == "mdm":
            out = mdm_sample(self.logits, x, gen_length=gen_length, mask_id=self.mask_id,
                             vocab_limit=limit, generator=g, **options)
        else:
            out = ar_sample(self.logits, x, gen_length=gen_length, vocab_limit=limit, generator=g,
                            temperature=options.get("temperature", 1.0))
        return out[:, len(prompt):].tolist()


def load_generator(source: str, objective: str | None = None) -> Generator:
    """Open ``source`` (SAVE, SAVE/global_stepN or a universal checkpoint) for sampling.

    Needs a torch.distributed world of one with megatron-core's parallel state (the tool
    starts one).
    """
    ckpt = open_checkpoint(source)
    metadata = ckpt.metadata
    saved = check_objective(metadata, objective, source)
    spec = ckpt.spec
    model = GPTModel(spec).eval()
    load_weights(model, ckpt, spec, tp_rank=0, tp=1)
    mask_id = None
    if saved == "mdm":
        choice = (metadata.get("config") or {}).get("--mdm-mask-token-id", "auto")
        mask_id = spec.original_vocab_size if choice == "auto" else int(choice)
    return Generator(model, spec, saved, mask_id, build_tokenizer(saved_data_config(metadata)))
