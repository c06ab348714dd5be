"""Training data: data file lists, splits, tokenizer."""

from __future__ import annotations

from dataclasses import dataclass

from megatron.config.fields import SECTION, ConfigError, knob, require_positive, require_registered


@dataclass(**SECTION)
class DataConfig:
    """Where samples come from (docs/design.md §6)."""

    data_file_list: str | None = None
    """File of 'weight prefix corpus' lines naming indexed datasets (.bin/.idx prefixes)."""
    valid_data_file_list: str | None = None
    """Separate validation data file list (then --data-file-list is used for training only)."""
    test_data_file_list: str | None = None
    """Separate test data file list; never read during training."""
    split: str = "98,1,1"
    """Train/valid/test split of every dataset's documents, as relative weights."""
    data_cache_path: str | None = None
    """Directory for blend index maps: built once by rank 0, memory-mapped by every rank."""
    unique_tokens: int | None = None
    """Train on a fixed subset of this many unique tokens, repeated (data-constrained runs)."""
    mock_data: bool = False
    """Train on random tokens (no data files); for tests and benchmarks."""
    check_data: bool = False
    """At start, check every token id of every dataset against the vocabulary (default: a sample of each)."""
    tokenizer_type: str = knob("byte", names="megatron.data.tokenizers:TOKENIZERS")
    """Tokenizer, from the tokenizer registry."""
    tokenizer_model: str | None = None
    """Tokenizer model file (sentencepiece .model or Hugging Face tokenizer.json)."""
    vocab_file: str | None = None
    """GPT-2 BPE vocabulary (vocab.json) for --tokenizer-type gpt2bpe."""
    merge_file: str | None = None
    """GPT-2 BPE merges (merges.txt) for --tokenizer-type gpt2bpe."""
    vocab_size: int | None = None
    """Vocabulary size for --mock-data (real tokenizers report their own)."""
    metadata_loss_mask: bool = True
    """Read PREFIX's loss mask (OUT_lossmask_document, written by preprocessing with
    --metadata-keys) so metadata prefixes are context but never targets; --no-metadata-loss-mask
    trains on them too."""

    def __post_init__(self) -> None:
        require_registered(self, "tokenizer_type", "tokenizer")
        if (self.vocab_file or self.merge_file) and self.tokenizer_type != "gpt2bpe":
            raise ConfigError(
                f"--vocab-file: only --tokenizer-type gpt2bpe (Megatron's GPT2BPETokenizer) reads "
                f"--vocab-file/--merge-file, but the tokenizer is {self.tokenizer_type!r}; add "
                "--tokenizer-type gpt2bpe or drop the files"
            )
        require_positive(self, "vocab_size")
        require_positive(self, "unique_tokens")
        parts = self.split.replace("/", ",").split(",")
        try:
            weights = [float(p) for p in parts]
        except ValueError:
            raise ConfigError(f"--split: expected numbers like 98,1,1, got {self.split!r}") from None
        if len(weights) > 3 or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(
                f"--split: expected up to three non-negative weights like 98,1,1, got {self.split!r}"
            )
        if self.mock_data and self.data_file_list is not None:
            raise ConfigError("--mock-data: cannot be combined with --data-file-list")
        for flag, value in (
            ("--valid-data-file-list", self.valid_data_file_list),
            ("--test-data-file-list", self.test_data_file_list),
        ):
            if value is not None and self.data_file_list is None:
                raise ConfigError(f"{flag}: needs a training list (--data-file-list / DATA_FILE_LIST)")

    @property
    def split_ratios(self) -> tuple[float, float, float]:
        """Normalized (train, valid, test) fractions."""
        weights = [float(p) for p in self.split.replace("/", ",").split(",")]
        weights += [0.0] * (3 - len(weights))
        total = sum(weights)
        return (weights[0] / total, weights[1] / total, weights[2] / total)
