"""Where each of our parameters lives in a Megatron-DeepSpeed checkpoint.

Three layouts (see ``docs/import_megatron_deepspeed.md``):

- ``dense``: ``GPTModel`` under DeepSpeed without its pipeline engine; TP rank t's weights are
  nested dicts in ``mp_rank_{t:02d}_model_states.pt`` (``module/language_model/encoder/...``);
- ``pipe``: ``GPTModelPipe``; one file per pipeline layer and TP rank,
  ``layer_{j:02d}-model_{t:02d}-model_states.pt``, layer ``e`` the embedding, ``e+1..e+L`` the
  transformer layers, ``e+L+1`` the final norm, ``e+L+2`` the head (or the tied embedding's copy);
- ``universal``: DeepSpeed's ``zero/<parameter name>/fp32.pt``, full tensors already.

Each parameter has one *flat name*, the module's ``named_parameters`` name that DeepSpeed's
optimizer files and universal directories use: ``language_model.encoder.layers.0.mlp...`` (dense),
``3.mlp...`` / ``tied_modules.embed.word_embeddings.weight`` (pipe). Torch-free.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

from megatron.checkpointing.metadata import CheckpointError
from megatron.model.spec import GPTSpec

MODEL_FILE = re.compile(r"mp_rank_(\d+)_model_states\.pt")
LAYER_FILE = re.compile(r"layer_(\d+)-model_(\d+)-model_states\.pt")
LATEST_FILES = ("latest", "latest_checkpointed_iteration.txt", "latest_universal")
_LAYER_PARAM = re.compile(r"(\d+)\.(input_layernorm|self_attention|post_attention_layernorm|mlp)\.")


@dataclass(frozen=True, slots=True)
class Piece:
    """One stored tensor: the file and the keys leading to it inside the loaded object."""

    file: str
    keys: tuple[str, ...]


def resolve_step_dir(path: str) -> str:
    """The step directory ``path`` names: itself, or the one its ``latest`` /
    ``latest_checkpointed_iteration.txt`` / ``latest_universal`` points at.

    Raises:
        CheckpointError: Nothing there looks like a step directory.
    """
    if not os.path.isdir(path):
        raise CheckpointError(f"--input: {path} is not a directory")
    if is_step_dir(path):
        return path
    for pointer in LATEST_FILES:
        file = os.path.join(path, pointer)
        if not os.path.isfile(file):
            continue
        with open(file) as f:
            tag = f.read().strip()
        step = f"global_step{tag}" if tag.isdigit() else tag
        candidates = [step] if step.endswith("_universal") else [step, f"{step}_universal"]
        for name in candidates:
            if is_step_dir(os.path.join(path, name)):
                return os.path.join(path, name)
        raise CheckpointError(f"--input: {file} names {tag!r}, but {path} has no such checkpoint "
                              f"(looked for {', '.join(candidates)})")
    raise CheckpointError(f"--input: {path} holds no Megatron-DeepSpeed checkpoint: no "
                          "mp_rank_XX_model_states.pt, zero/ or latest file; give the checkpoint "
                          "directory or its global_stepN directory")


def is_step_dir(path: str) -> bool:
    """A step directory of the fork: model-state files (or a universal ``zero/``), not ours."""
    if os.path.isfile(os.path.join(path, "run_metadata.json")):
        return False  # one of ours
    return any(MODEL_FILE.fullmatch(f) for f in _listdir(path))


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def model_files(directory: str) -> dict[int, str]:
    """``mp rank -> mp_rank_XX_model_states.pt`` of a step directory."""
    found = {}
    for name in _listdir(directory):
        match = MODEL_FILE.fullmatch(name)
        if match:
            found[int(match.group(1))] = os.path.join(directory, name)
    return found


def layer_files(directory: str) -> dict[tuple[int, int], str]:
    """``(layer, TP rank) -> layer_JJ-model_TT-model_states.pt``."""
    found = {}
    for name in _listdir(directory):
        match = LAYER_FILE.fullmatch(name)
        if match:
            found[(int(match.group(1)), int(match.group(2)))] = os.path.join(directory, name)
    return found


def detect_kind(directory: str) -> str:
    """``universal``, ``pipe`` or ``dense``."""
    if os.path.isdir(os.path.join(directory, "zero")):
        return "universal"
    return "pipe" if layer_files(directory) else "dense"


def universal_pipe_base(directory: str) -> int | None:
    """Pipeline index of transformer layer 0 in a universal directory (None: dense names)."""
    indices = [int(m.group(1)) for n in _listdir(os.path.join(directory, "zero"))
               if (m := _LAYER_PARAM.match(n))]
    return min(indices) if indices else None


def flat_name(name: str, spec: GPTSpec, base: int | None) -> str:
    """The fork's parameter name of our canonical ``name`` (``base``: pipeline index of transformer
    layer 0; None for ``GPTModel``)."""
    L = spec.num_layers
    head, _, rest = name.partition(".")
    if base is None:
        if head == "embedding":
            return f"language_model.embedding.{rest}"
        if head == "layers":
            return f"language_model.encoder.layers.{rest}"
        if head == "final_norm":
            return f"language_model.encoder.{rest}"
        return "language_model.output_layer.weight"
    if head == "embedding":
        return f"tied_modules.embed.{rest}" if spec.tie_embeddings else f"{base - 1}.{rest}"
    if head == "layers":
        i, _, inner = rest.partition(".")
        return f"{base + int(i)}.{inner}"
    if head == "final_norm":
        return f"{base + L}.{rest.partition('.')[2]}"
    return f"{base + L + 1}.lm_head.weight"


def dense_piece(directory: str, flat: str, tp_rank: int) -> Piece:
    """Where TP rank ``tp_rank`` of a ``GPTModel`` parameter is (nested state dicts)."""
    file = os.path.join(directory, f"mp_rank_{tp_rank:02d}_model_states.pt")
    if flat.startswith("language_model.encoder."):
        keys = ("module", "language_model", "encoder", flat[len("language_model.encoder."):])
    else:
        keys = ("module", *flat.split("."))
    return Piece(file, keys)


def pipe_piece(directory: str, flat: str, tp_rank: int, embed_layer: int) -> Piece:
    """Where TP rank ``tp_rank`` of a ``GPTModelPipe`` parameter is (one file per layer)."""
    if flat.startswith("tied_modules.embed."):
        layer, key = embed_layer, flat[len("tied_modules.embed."):]
    else:
        index, _, key = flat.partition(".")
        layer = int(index)
    return Piece(os.path.join(directory, f"layer_{layer:02d}-model_{tp_rank:02d}-model_states.pt"), (key,))


def check_pipe_files(directory: str, spec: GPTSpec, tp: int) -> int:
    """The embedding's layer index ``e`` after checking every layer file ``e..e+L+2`` of every
    TP rank is there.

    Raises:
        CheckpointError: A missing or unexpected layer file.
    """
    files = layer_files(directory)
    layers = sorted({j for j, _ in files})
    e = layers[0]
    expected = {(j, t) for j in range(e, e + spec.num_layers + 3) for t in range(tp)}
    missing = sorted(expected - set(files))
    if missing:
        j, t = missing[0]
        raise CheckpointError(f"{directory}: layer_{j:02d}-model_{t:02d}-model_states.pt is missing "
                              f"({len(missing)} layer files missing for {spec.num_layers} layers at TP={tp}); "
                              "the checkpoint is incomplete")
    extra = sorted(set(files) - expected)
    if extra:
        raise CheckpointError(f"{files[extra[0]]}: unexpected for {spec.num_layers} layers at TP={tp} "
                              "(args.num_layers or args.tensor_model_parallel_size disagree with the files)")
    return e


def universal_file(directory: str, flat: str, state: str = "fp32") -> str:
    """``zero/<flat>/<state>.pt``."""
    return os.path.join(directory, "zero", flat, f"{state}.pt")


def find_optimizer_files(directory: str) -> dict[int, list[str]]:
    """``mp rank -> [DP rank 0, 1, ...]`` of DeepSpeed's ZeRO-1/2 (or bf16) optimizer files."""
    found: dict[int, dict[int, str]] = {}
    for path in glob.glob(os.path.join(directory, "*zero_pp_rank_*_mp_rank_*_optim_states.pt")):
        match = re.search(r"zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$", path)
        if match:
            found.setdefault(int(match.group(2)), {})[int(match.group(1))] = path
    return {mp: [ranks[d] for d in sorted(ranks)] for mp, ranks in sorted(found.items())}


IGNORED_KEYS = ("_extra_state", "inv_freq")  # Transformer Engine state, RoPE caches: not parameters


def stored_keys(node: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Key paths of every tensor in a (nested) state dict."""
    if not isinstance(node, dict):
        return [prefix] if hasattr(node, "shape") else []
    found = []
    for key, value in node.items():
        if not str(key).endswith(IGNORED_KEYS):
            found += stored_keys(value, (*prefix, str(key)))
    return found


def unexpected_tensor(pieces: list[Piece], loaded: dict[str, object], directory: str,
                      kind: str) -> tuple[str, str] | None:
    """The first stored tensor (file, key) that no parameter of the model maps to, or None.

    ``loaded``: each model/layer file of ``pieces`` loaded (universal: unused). A parameter the
    args do not describe (a bias, a second norm) would otherwise be dropped silently.
    """
    if kind == "universal":
        names = {piece.file.split(os.sep)[-2] for piece in pieces}
        extra = sorted(n for n in _listdir(os.path.join(directory, "zero"))
                       if os.path.isdir(os.path.join(directory, "zero", n)) and n not in names)
        return (os.path.join(directory, "zero", extra[0]), "fp32.pt") if extra else None
    wanted: dict[str, set[tuple[str, ...]]] = {}
    for piece in pieces:
        wanted.setdefault(piece.file, set()).add(piece.keys)
    for file, keys in sorted(wanted.items()):
        state = loaded[file]
        root = ("module",) if kind == "dense" else ()
        node = state.get("module") if kind == "dense" and isinstance(state, dict) else state
        for path in stored_keys(node, root):
            if path not in keys:
                return file, "/".join(path)
    return None
