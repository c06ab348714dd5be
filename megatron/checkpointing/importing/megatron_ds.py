"""Import source for checkpoints of the argonne-lcf Megatron-DeepSpeed fork (``megatron-deepspeed``).

Reads ``GPTModel`` (``mp_rank_XX_model_states.pt``) and ``GPTModelPipe``
(``layer_JJ-model_TT-model_states.pt``) checkpoints at any TP/PP, and DeepSpeed universal
checkpoints of either (``zero/<name>/fp32.pt``), with the shape from the saved ``args``. Their
fused layouts are ours (``docs/import_megatron_deepspeed.md``): QKV rows grouped per key/value
head ``[q of the group, k, v]``, ``dense_h_to_4h`` = ``[gate; up]`` per TP rank, the vocabulary
padded rows kept; so TP shards merge with ``layout.merge`` and no rows are permuted.

Weights come from the fp32 master copies in the ZeRO optimizer files when those are present
(a bf16 run's module weights are rounded), else from the module files. Every file is opened
with ``weights_only=True`` (``safe_pickle``) and memory-mapped; all shapes are checked against
the ``args`` before any tensor is read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from megatron.checkpointing.importing import megatron_ds_files as files
from megatron.checkpointing.importing.megatron_ds_args import (
    fork_args,
    fork_spec,
    fork_tokenizer,
    model_flags,
)
from megatron.checkpointing.importing.megatron_ds_optim import MASTER, ZeroPartitions
from megatron.checkpointing.importing.safe_pickle import load_pt
from megatron.checkpointing.importing.source import (
    SourceFormat,
    TensorLoader,
    TokenizerSource,
    register_source_format,
)
from megatron.checkpointing.layout import full_shapes, tp_layout
from megatron.checkpointing.metadata import CheckpointError
from megatron.model.spec import GPTSpec

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

FORMAT = "megatron-deepspeed"
MOMENTS = ("exp_avg", "exp_avg_sq")


def local_shape(full: tuple[int, ...], layout: str, tp: int) -> tuple[int, ...]:
    """TP-local shape of a parameter of full shape ``full``."""
    if layout in ("dim0", "swiglu"):
        return (full[0] // tp, *full[1:])
    if layout == "dim1":
        return (full[0], full[1] // tp)
    return full


class MegatronDeepSpeedSource:
    """One opened Megatron-DeepSpeed checkpoint (see the module docstring).

    Args:
        path: The checkpoint directory (its ``latest`` files are followed) or a step directory.
        tokenizer_model: A local copy of the tokenizer the run names (a file or a directory).
        optimizer_state: Read the Adam moments (and fp32 masters) of the optimizer files.

    Raises:
        CheckpointError: Not such a checkpoint, an option without a faithful mapping, missing
            files, or ``args`` that disagree with a tensor's shape; the message names the file.
    """

    format = FORMAT

    def __init__(self, path: str, *, tokenizer_model: str | None = None, optimizer_state: bool = True):
        self.directory = files.resolve_step_dir(path)
        self.path = self.directory
        self.kind = files.detect_kind(self.directory)
        self._cache: dict[str, Any] = {}
        mp_files = files.model_files(self.directory)
        first = mp_files[min(mp_files)]
        state = self._open(first)
        self.args = fork_args(state, first)
        self.iteration = state.get("iteration")
        self.spec: GPTSpec = fork_spec(self.args)
        self._tokenizer = fork_tokenizer(self.args, tokenizer_model)
        self.tp = 1 if self.kind == "universal" else int(self.args.get("tensor_model_parallel_size", 1))
        self.pp = int(self.args.get("pipeline_model_parallel_size", 1))
        self.shapes = full_shapes(self.spec)
        self._base, embed_layer = self._pipeline_indices()
        self.flat = {name: files.flat_name(name, self.spec, self._base) for name in self.shapes}
        self.pieces = {name: self._pieces(flat, embed_layer) for name, flat in self.flat.items()}
        zero = files.find_optimizer_files(self.directory) if self.kind != "universal" else {}
        self.zero = ZeroPartitions(zero, self._open) if zero and optimizer_state else None
        self.optimizer_state = optimizer_state
        self._check_shapes()
        log.info("%s: Megatron-DeepSpeed %s checkpoint of iteration %s (TP=%d PP=%d), %s", self.directory,
                 self.kind, self.iteration, self.tp, self.pp, "with ZeRO optimizer files" if zero else "")
        if not self._tokenizer.files:
            log.warning("its tokenizer is only named (args.tokenizer_model=%r, type %r): give the local copy "
                        "with --tokenizer-model PATH", self._tokenizer.name, self.args.get("tokenizer_type"))

    # ---- layout -------------------------------------------------------------------------------

    def _pipeline_indices(self) -> tuple[int | None, int]:
        if self.kind == "pipe":
            e = files.check_pipe_files(self.directory, self.spec, self.tp)
            return e + 1, e
        if self.kind == "universal":
            base = files.universal_pipe_base(self.directory)
            return base, -1 if base is None else base - 1
        if self.pp != 1:
            raise self.args.refuse("pipeline_model_parallel_size", "GPTModel files without layer files")
        return None, -1

    def _pieces(self, flat: str, embed_layer: int) -> list[files.Piece]:
        if self.kind == "universal":
            return [files.Piece(files.universal_file(self.directory, flat), ("param",))]
        if self.kind == "pipe":
            return [files.pipe_piece(self.directory, flat, t, embed_layer) for t in range(self.tp)]
        return [files.dense_piece(self.directory, flat, t) for t in range(self.tp)]

    def _mp_ranks(self, tp_rank: int) -> list[int]:
        """Model-parallel ranks of TP rank ``tp_rank``'s files, in pipeline-stage order."""
        return [stage * self.tp + tp_rank for stage in range(self.pp)]

    # ---- reading ------------------------------------------------------------------------------

    def _open(self, path: str) -> Any:
        """The loaded (memory-mapped) file. Files that hold many parameters (``mp_rank_XX``, the
        optimizer's) stay open; a layer's or a universal parameter's file is opened per use, so
        its pages can go once its tensors are written."""
        if path in self._cache:
            return self._cache[path]
        if not os.path.isfile(path):
            raise CheckpointError(f"{path} is missing; the checkpoint is incomplete")
        loaded = load_pt(path)
        if not os.path.basename(path).startswith(("layer_", "fp32.pt", "exp_avg")):
            self._cache[path] = loaded
        return loaded

    def _get(self, piece: files.Piece) -> Any:
        node = self._open(piece.file)
        for i, key in enumerate(piece.keys):
            if not isinstance(node, dict) or key not in node:
                where = "/".join(piece.keys[: i + 1])
                raise CheckpointError(f"{piece.file}: no {where!r}; the file does not hold the model "
                                      f"its args describe ({self.kind} layout)")
            node = node[key]
        return node

    def _check_shapes(self) -> None:
        """Every stored tensor against the shape the ``args`` give (file, key, both shapes)."""
        for name, pieces in self.pieces.items():
            layout = tp_layout(name, self.spec)
            want = local_shape(self.shapes[name], layout, len(pieces))
            for piece in pieces:
                tensor = self._get(piece)
                got = tuple(tensor.shape)
                if got != want and not self._stripped_vocab(name, piece, got, want):
                    raise CheckpointError(
                        f"{piece.file}: {'/'.join(piece.keys)} has shape {got}, but the checkpoint's args "
                        f"give {want} (num_layers={self.spec.num_layers}, hidden_size={self.spec.hidden_size}, "
                        f"ffn_hidden_size={self.spec.ffn_hidden_size}, heads={self.spec.num_attention_heads}/"
                        f"{self.spec.num_key_value_heads}, kv_channels={self.spec.head_dim}, "
                        f"padded_vocab_size={self.spec.vocab_size}, TP={len(pieces)}); not importable")
        every = [piece for pieces in self.pieces.values() for piece in pieces]
        loaded = {p.file: self._open(p.file) for p in every} if self.kind != "universal" else {}
        extra = files.unexpected_tensor(every, loaded, self.directory, self.kind)
        if extra is not None:
            raise CheckpointError(f"{extra[0]}: {extra[1]} is a tensor the checkpoint's args do not describe "
                                  f"(add_bias_linear={self.spec.bias}, normalization={self.spec.normalization}, "
                                  f"untie_embeddings_and_output_weights={not self.spec.tie_embeddings}); not importable")

    def _stripped_vocab(self, name: str, piece: files.Piece, got: tuple, want: tuple) -> bool:
        """A universal vocabulary tensor DeepSpeed stripped of its padded rows."""
        return (self.kind == "universal" and bool(self._open(piece.file).get("vocab_tensor"))
                and got[1:] == want[1:] and got[0] <= want[0])

    def _full(self, name: str, key: str = MASTER) -> torch.Tensor:
        import torch

        from megatron.checkpointing.layout import merge

        layout = tp_layout(name, self.spec)
        if self.kind == "universal":
            piece = self.pieces[name][0]
            if key != MASTER:
                piece = files.Piece(files.universal_file(self.directory, self.flat[name], key), ("param",))
            tensor = self._get(piece).float()
            rows = self.shapes[name][0] - tensor.shape[0]
            return torch.cat([tensor, tensor.new_zeros(rows, *tensor.shape[1:])]) if rows else tensor
        if self.zero is not None and self.zero.has(self.flat[name]):
            shape = local_shape(self.shapes[name], layout, self.tp)
            slices = [self.zero.local(self.flat[name], self._mp_ranks(t), key, shape) for t in range(self.tp)]
        else:
            slices = [self._get(piece).float() for piece in self.pieces[name]]
        return merge(slices, layout).clone()

    # ---- ImportSource -------------------------------------------------------------------------

    def limits(self) -> dict[str, dict[str, Any]]:
        """None: the fork's models run at any length their positions allow (``ImportSource``)."""
        return {}

    def model_flags(self) -> dict[str, Any]:
        """Our flat config of the model (shape, vocabulary padding, tokenizer type), with
        ``--vocab-size``: the local tokenizer's vocabulary when one is given (checked to pad to
        exactly the checkpoint's rows), else the padded row count (the fork records no other).

        Raises:
            CheckpointError: A local tokenizer whose vocabulary does not pad to the checkpoint's
                embedding rows (not the tokenizer this model was trained with).
        """
        flags = model_flags(self.spec, self.args, self._tokenizer)
        rows, multiple = self.spec.vocab_size, int(flags["--make-vocab-size-divisible-by"])
        flags["--vocab-size"] = rows
        tok = self._tokenizer
        if tok.files and tok.tokenizer_type is not None:
            from types import SimpleNamespace

            from megatron.data.tokenizers import build_tokenizer

            size = build_tokenizer(SimpleNamespace(tokenizer_type=tok.tokenizer_type, tokenizer_model=tok.files[0],
                                                   vocab_file=None, merge_file=None, vocab_size=None)).vocab_size
            if -(-size // multiple) * multiple != rows:
                raise CheckpointError(
                    f"--tokenizer-model: {tok.files[0]} has {size} ids, which pad (to a multiple of "
                    f"{multiple}) to {-(-size // multiple) * multiple} rows, not the checkpoint's {rows}: "
                    "not the tokenizer this model was trained with")
            flags["--vocab-size"] = size
        return flags

    def tensors(self) -> Iterator[tuple[str, TensorLoader]]:
        """``(canonical name, loader)`` of every parameter, fp32, TP-merged, our layout."""
        for name in self.shapes:
            yield name, (lambda name=name: self._full(name))

    def optimizer_states(self) -> Iterator[tuple[str, str, TensorLoader]]:
        """Adam's ``exp_avg``/``exp_avg_sq`` per parameter, when the checkpoint has them."""
        if not self.optimizer_state:
            return
        for name in self.shapes:
            for key in self._moment_keys(name):
                yield name, key, (lambda name=name, key=key: self._full(name, key))

    def _moment_keys(self, name: str) -> list[str]:
        if self.kind == "universal":
            return [k for k in MOMENTS if os.path.isfile(files.universal_file(self.directory, self.flat[name], k))]
        if self.zero is not None and self.zero.has(self.flat[name]):
            return self.zero.keys(self.flat[name])
        return []

    def optimizer_step(self) -> int | None:
        """Adam's step count of the moments (for its bias correction), if recorded."""
        if not self.optimizer_state:
            return None
        if self.kind == "universal":
            path = files.universal_file(self.directory, self.flat[next(iter(self.shapes))], "step")
            if not os.path.isfile(path):
                return None
            step = load_pt(path, mmap=False)
            step = step.get("param", step) if isinstance(step, dict) else step
            return int(step.item() if hasattr(step, "item") else step)
        return self.zero.step() if self.zero is not None else None

    def tokenizer(self) -> TokenizerSource:
        """Their tokenizer's type and name (a hub id, reported), with the local copy if given."""
        return self._tokenizer

    def input_files(self) -> list[str]:
        """Every file the import reads (model, layer, optimizer or universal files)."""
        used = {piece.file for pieces in self.pieces.values() for piece in pieces}
        used |= set(files.model_files(self.directory).values())
        if self.zero is not None:
            used |= {p for paths in self.zero.files.values() for p in paths}
        if self.kind == "universal" and self.optimizer_state:
            for name, flat in self.flat.items():
                used |= {files.universal_file(self.directory, flat, k) for k in self._moment_keys(name)}
        return sorted(used)


def detect(path: str) -> bool:
    """A directory of the fork: a step directory, or one whose ``latest`` file names one."""
    try:
        return bool(files.resolve_step_dir(path))
    except CheckpointError:
        return False


def open_source(path: str, **options: Any) -> MegatronDeepSpeedSource:
    """Open ``path`` (options: ``tokenizer_model``, ``optimizer_state``)."""
    return MegatronDeepSpeedSource(path, **options)


MEGATRON_DEEPSPEED = register_source_format(SourceFormat(
    name=FORMAT,
    detect=detect,
    open=open_source,
    description="argonne-lcf Megatron-DeepSpeed: GPTModel / GPTModelPipe step directories at any "
                "TP/PP, or their universal checkpoints (zero/<param>/fp32.pt), shape from the saved args",
    options={"tokenizer_model": "a local copy of the tokenizer args.tokenizer_model names",
             "optimizer_state": "carry Adam's exp_avg/exp_avg_sq (False: --no-optimizer-state)"},
))
