"""What an importable checkpoint format provides, and the registry of formats.

A source reads one checkpoint written by another framework and presents it in *our* terms:

- ``model_flags()``: the flat ``{flag: value}`` config of the model it holds, in the form of our
  ``run_metadata.json`` ``"config"`` (``{"--num-layers": 2, "--swiglu": True, ...}``), so a run
  that loads the import inherits the shape and tokenizer (``megatron.config.layers.INHERITED_KEYS``);
- ``tensors()``: every parameter as ``(canonical name, loader)`` (names of
  ``megatron.checkpointing.layout.full_shapes``; the loader returns the full, TP-merged tensor and
  is called once, so at most one tensor is in memory at a time);
- ``optimizer_states()``: optional per-parameter optimizer state (``exp_avg``, ``exp_avg_sq``) in
  the same form, or an empty iterator;
- ``optimizer_step()``: the optimizer's step count of those states (Adam's bias correction), or
  None when the source records none (then no ``step`` is written);
- ``limits()``: ``{flag: {"max": value, "why": reason}}``, bounds a run on the import must keep
  (a sliding window limits ``--seq-length``), recorded in ``run_metadata.json`` and checked
  when a run loads it (``megatron.config.layers.checkpoint_layer``);
- ``tokenizer()``: where the tokenizer is (a bundled file, or only a name to report);
- ``input_files()``: the files read, for the sha256 recorded in the import's metadata.

Torch-free: the loaders import torch when called.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from megatron.registry import Registry

if TYPE_CHECKING:
    import torch

TensorLoader = Callable[[], "torch.Tensor"]


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenizerSource:
    """The tokenizer a source ships or names.

    Attributes:
        tokenizer_type: Our ``--tokenizer-type`` (``HFTokenizer``, ``SentencePieceTokenizer``, ...).
        files: Local files to copy into the import (``tokenizer.json``, ``tokenizer.model``, ...).
        name: A name the source records but does not ship (a hub id), reported to the user.
    """

    tokenizer_type: str | None = None
    files: tuple[str, ...] = ()
    name: str | None = None


class ImportSource(Protocol):
    """One opened checkpoint of a foreign format (see the module docstring)."""

    format: str
    path: str

    def model_flags(self) -> dict[str, Any]: ...

    def tensors(self) -> Iterator[tuple[str, TensorLoader]]: ...

    def optimizer_states(self) -> Iterator[tuple[str, str, TensorLoader]]: ...

    def optimizer_step(self) -> int | None: ...

    def limits(self) -> dict[str, dict[str, Any]]: ...

    def tokenizer(self) -> TokenizerSource: ...

    def input_files(self) -> list[str]: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class SourceFormat:
    """A registered format: ``detect(path)`` says whether ``path`` is one; ``open(path, **options)``
    reads its header (config/args, index) and refuses what has no faithful mapping, naming the
    file and key, before any tensor is read."""

    name: str
    detect: Callable[[str], bool]
    open: Callable[..., ImportSource]
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)


SOURCE_FORMATS: Registry[SourceFormat] = Registry(
    "import format", "--format", loader="megatron.checkpointing.importing.formats"
)
"""``--format`` value -> format (``formats`` imports every format's module)."""


def register_source_format(fmt: SourceFormat) -> SourceFormat:
    """Add ``fmt`` to the registry (a name registered twice is a ``ValueError``)."""
    return SOURCE_FORMATS.add(fmt.name, fmt)


def detect_format(path: str) -> str | None:
    """The first registered format whose ``detect`` accepts ``path``, or None."""
    for fmt in SOURCE_FORMATS.values():
        if fmt.detect(path):
            return fmt.name
    return None
