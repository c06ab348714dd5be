"""What ``tools/eval_metadata_ppl.py`` needs around ``evaluate_pairs``: the model and tokenizer of
a checkpoint, the held-out documents, and the check that they were not trained on.

The seed's notes (002) record that the designated test file was one of the training shards.
Preprocessing with metadata stores each input's path and SHA-256 in ``OUT_metadata.json``; an
evaluation file whose path or content matches an input of any dataset of the checkpoint's
training lists is refused.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence

import torch

from megatron.config.data import DataConfig
from megatron.config.fields import ConfigError
from megatron.data.data_list import parse_data_file_list
from megatron.data.tokenizers import Tokenizer, build_tokenizer, file_sha256
from megatron.metadata.lossmask import SUFFIX
from megatron.metadata.preprocess import iter_records, metadata_json_path

log = logging.getLogger(__name__)


def dataset_summaries(prefix: str) -> list[tuple[str, dict]]:
    """``OUT_metadata.json`` files that may describe dataset ``OUT_<key>_document``."""
    found = []
    stem = prefix.removesuffix(SUFFIX)
    for cut in range(len(stem) - 1, 0, -1):
        if stem[cut] == "_":
            path = metadata_json_path(stem[:cut])
            if os.path.isfile(path):
                with open(path) as f:
                    found.append((path, json.load(f)))
    return found


def check_not_trained_on(eval_path: str, train_lists: Sequence[str]) -> None:
    """Refuse an evaluation file that is an input of a training dataset.

    Raises:
        ConfigError: Same path or same content as a training input (names both), or a training
            list that cannot be read.
    """
    path, digest = os.path.abspath(eval_path), file_sha256(eval_path)
    for data_list in train_lists:
        for entry in parse_data_file_list(
            data_list, flag="--train-data-file-list", check_files=False
        ):
            for summary_path, summary in dataset_summaries(entry.prefix):
                for item in summary.get("inputs", []):
                    if item.get("path") == path or (digest and item.get("sha256") == digest):
                        raise ConfigError(
                            f"--data: {eval_path} is a training file: {summary_path} records it "
                            f"({item.get('path')}) as an input of {entry.prefix}, listed in "
                            f"{data_list} ({entry.source}); evaluate on held-out documents"
                        )


def training_lists(metadata: dict) -> list[str]:
    """The training data lists a checkpoint was trained on (from its stored config)."""
    config = metadata.get("config", {})
    return [config[f] for f in ("--data-file-list",) if config.get(f)]


def checkpoint_tokenizer(metadata: dict) -> Tokenizer:
    """The tokenizer recorded in a checkpoint's config."""
    c = metadata.get("config", {})
    return build_tokenizer(
        DataConfig(
            tokenizer_type=c.get("--tokenizer-type", "byte"),
            tokenizer_model=c.get("--tokenizer-model"),
            vocab_file=c.get("--vocab-file"),
            merge_file=c.get("--merge-file"),
        )
    )


def load_records(path: str, keys: Sequence[str], text_key: str = "text") -> list[tuple[str, dict]]:
    """``(text, {key: value})`` of every jsonl record of ``path``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--data: no such file {path}")
    return [(text, meta) for text, meta, _ in iter_records([path], text_key, keys)]


def checkpoint_metadata(source: str) -> dict:
    """A checkpoint's run metadata (without building the model)."""
    from megatron.checkpointing.hf_export import open_checkpoint

    return open_checkpoint(source).metadata


class CheckpointModel:
    """A checkpoint's GPT on one CPU process (a world-1 gloo group for megatron-core's layers).

    Args:
        source: ``SAVE`` (its latest), ``SAVE/global_stepN`` or a universal checkpoint.
    """

    def __init__(self, source: str):
        import torch.distributed as dist
        from megatron.core import parallel_state

        from megatron.checkpointing.hf_export import open_checkpoint
        from megatron.checkpointing.universal import load_weights
        from megatron.model.gpt import GPTModel

        ckpt = open_checkpoint(source)
        self.metadata, self.spec = ckpt.metadata, ckpt.spec
        self._owns_group = not dist.is_initialized()
        if self._owns_group:
            self._tmp = tempfile.TemporaryDirectory()
            dist.init_process_group(
                "gloo", init_method=f"file://{self._tmp.name}/rdzv", rank=0, world_size=1
            )
            parallel_state.initialize_model_parallel(1, 1, create_gloo_process_groups=False)
        self.model = GPTModel(self.spec)
        load_weights(self.model, ckpt, self.spec, 0, 1)
        self.model.eval()

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits ``[b, s, V]``."""
        return self.model(tokens)

    def close(self) -> None:
        """Tear down the process group this object started."""
        if self._owns_group:
            from megatron.distributed import destroy_distributed

            destroy_distributed()
            self._tmp.cleanup()
