"""Write any ``ImportSource`` as a universal checkpoint of ours (see ``universal.py``'s layout).

Order of work: refuse an existing output; take the source's model flags and build the model
spec exactly as a training run would (``build_model_spec``), so the shapes checked here are
the ones a run at any TP/PP/DP/ZeRO expects; check that the source names every parameter and
nothing else; then stream: each worker thread calls one loader (one full tensor in memory per
worker), checks its shape, converts it to ``--dtype`` and writes
``zero/<name>/fp32.pt``. The input files are hashed (sha256) in a thread meanwhile. Everything
goes to ``OUTPUT.tmp-<pid>``, renamed to ``OUTPUT`` when complete and removed on any error.

``run_metadata.json`` carries the flat config (shape and tokenizer flags, which a run that
loads the import inherits: ``megatron.config.layers.INHERITED_KEYS``), the model spec, the
tokenizer identity, and ``import``: the source format, path, class, and each input's sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import torch

from megatron.checkpointing.importing.source import ImportSource, TensorLoader
from megatron.checkpointing.layout import full_shapes, tp_layout
from megatron.checkpointing.metadata import METADATA_VERSION, CheckpointError, code_version
from megatron.config import parse_args
from megatron.config.checkpoint_files import METADATA_FILE
from megatron.config.fields import ConfigError
from megatron.config.schema import knob_by_flag
from megatron.model.spec import GPTSpec
from megatron.plan.model_spec import build_model_spec

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
"""``(bytes written, total bytes, tensor name)`` after each tensor."""

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import wrote."""

    output: str
    format: str
    parameters: int
    tensors: int
    bytes_written: int
    seconds: float
    spec: GPTSpec


def _argv(flags: dict[str, Any]) -> list[str]:
    table = knob_by_flag()
    argv: list[str] = []
    for flag, value in flags.items():
        if value is True:
            argv.append(flag)
        elif value is False:
            if flag in table and table[flag].default is True:
                argv.append("--no-" + flag[2:])
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def spec_from_flags(flags: dict[str, Any]) -> GPTSpec:
    """The model spec a run with ``flags`` builds (TP=1; the full shapes do not depend on TP).

    ``flags["--vocab-size"]`` is the tokenizer's vocabulary; ``--make-vocab-size-divisible-by``
    pads it to the embedding rows.

    Raises:
        ConfigError: Flags our config refuses (the message names the flag).
    """
    if "--vocab-size" not in flags:  # a reader's duty: the tokenizer's vocabulary (before padding)
        raise ConfigError("--input: the source's model flags lack --vocab-size (the tokenizer's vocabulary)")
    model = {k: v for k, v in flags.items() if k not in ("--vocab-size", "--tokenizer-type", "--tokenizer-model")}
    cfg = parse_args([*_argv(model), "--mock-data", "--vocab-size", str(flags["--vocab-size"])]).config
    return build_model_spec(cfg, int(flags["--vocab-size"]), tp=1)


def sha256_of(path: str) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _cat_dim(layout: str) -> dict[str, Any]:
    return {"dim0": {"cat_dim": 0}, "dim1": {"cat_dim": 1},
            "swiglu": {"cat_dim": 0, "param_n_sub_params": 2}}.get(layout, {})


class _Writer:
    """Writes one tensor per call into ``zero/<name>/<key>.pt`` (thread-safe: one file per call)."""

    def __init__(self, zero: str, spec: GPTSpec, dtype: torch.dtype):
        self.zero, self.spec, self.dtype = zero, spec, dtype
        self.shapes = full_shapes(spec)

    def __call__(self, name: str, key: str, loader: TensorLoader) -> int:
        value = loader()
        directory = os.path.join(self.zero, name)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"{key}.pt")
        if key == "step" or not torch.is_tensor(value) or value.dim() == 0:
            torch.save(value, path)  # the optimizer step: a scalar, as convert.py writes it
            return 0
        if tuple(value.shape) != self.shapes[name]:
            raise CheckpointError(f"--input: {name} ({key}) is {tuple(value.shape)}, the model in the "
                                  f"source's config needs {self.shapes[name]}")
        # Weights in the import's dtype; optimizer moments stay fp32 (bf16 would round them).
        value = value.to(self.dtype if key == "fp32" else torch.float32).contiguous()
        torch.save({"param": value, **_cat_dim(tp_layout(name, self.spec))}, path + ".partial")
        os.replace(path + ".partial", path)
        return value.numel() * value.element_size()


def _check_names(source: ImportSource, shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, TensorLoader]]:
    tensors = list(source.tensors())
    names = [n for n, _ in tensors]
    missing, extra = sorted(set(shapes) - set(names)), sorted(set(names) - set(shapes))
    if missing or extra or len(names) != len(set(names)):
        raise CheckpointError(f"--input: {source.path}: the tensors differ from the model its config "
                              f"describes (missing {missing[:5]}, unexpected {extra[:5]})")
    return tensors


def _tokenizer_flags(source: ImportSource, output: str, tmp: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Copy the source's tokenizer files into the import; its flags and identity."""
    tok = source.tokenizer()
    if tok.name:
        log.info("the source names tokenizer %r (not bundled)", tok.name)
    if not tok.files:
        return {}, {"type": None, "files": [], "sha256": [], "name": tok.name}
    copied = []
    for file in tok.files:
        shutil.copyfile(file, os.path.join(tmp, os.path.basename(file)))
        copied.append(os.path.join(os.path.abspath(output), os.path.basename(file)))
    flags = {"--tokenizer-type": tok.tokenizer_type, "--tokenizer-model": copied[0]}
    identity = {"type": tok.tokenizer_type, "files": copied[:1], "sha256": [sha256_of(tok.files[0])],
                "name": tok.name}
    return flags, identity


def _total_bytes(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype) -> int:
    size = torch.tensor([], dtype=dtype).element_size()
    return sum(size * int(torch.Size(s).numel()) for s in shapes.values())


def import_checkpoint(source: ImportSource, output: str, *, dtype: str = "float32", workers: int = 1,
                      progress: Progress | None = None) -> ImportReport:
    """Write ``source`` as the universal checkpoint ``output`` (see the module docstring).

    Raises:
        CheckpointError: Existing output, missing/extra/misshapen tensors, unreadable inputs.
        ConfigError: Unknown dtype, or model flags our config refuses.
    """
    start = time.perf_counter()
    if os.path.exists(output):
        raise CheckpointError(f"--output: {output} exists; remove it or choose another directory")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype: unknown {dtype!r}; known: {sorted(DTYPES)}")
    flags = source.model_flags()
    spec = spec_from_flags(flags)
    shapes = full_shapes(spec)
    tensors = _check_names(source, shapes)
    tmp = f"{output.rstrip('/')}.tmp-{os.getpid()}"
    total, done = _total_bytes(shapes, DTYPES[dtype]), 0
    try:
        os.makedirs(os.path.join(tmp, "zero"))
        tok_flags, identity = _tokenizer_flags(source, output, tmp)
        write = _Writer(os.path.join(tmp, "zero"), spec, DTYPES[dtype])
        with ThreadPoolExecutor(max(1, workers) + 1) as pool:
            hashes = pool.submit(lambda: [(f, sha256_of(f), os.path.getsize(f)) for f in source.input_files()])
            writers = ThreadPoolExecutor(max(1, workers))
            try:
                futures = [(name, writers.submit(write, name, "fp32", loader)) for name, loader in tensors]
                states = [(n, k, writers.submit(write, n, k, ld)) for n, k, ld in source.optimizer_states()]
                for name, future in futures:
                    done += future.result()
                    if progress:
                        progress(done, total, name)
                keys = sorted({k for _, k, f in states if f.result() is not None})
                # Adam's step with its moments (bias correction), when the source records it.
                step = source.optimizer_step() if keys else None
                if step is not None:
                    for name in sorted({n for n, _, _ in states}):
                        write(name, "step", lambda step=step: torch.tensor(float(step)))
                    keys.append("step")
            finally:  # on an error, tensors not started yet are not read
                writers.shutdown(wait=True, cancel_futures=True)
            inputs = [{"file": f, "sha256": h, "bytes": b} for f, h, b in hashes.result()]
        metadata = _metadata(source, output, spec, {**flags, **tok_flags}, identity, inputs, dtype, keys)
        with open(os.path.join(tmp, METADATA_FILE), "w") as f:
            json.dump(metadata, f, indent=1, default=str)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    log.info("import: %s (%s) -> %s: %d tensors, %.1f MiB in %.1f s", source.path, source.format, output,
             len(tensors), done / 2**20, seconds)
    return ImportReport(output=output, format=source.format, parameters=spec.num_parameters(),
                        tensors=len(tensors), bytes_written=done, seconds=seconds, spec=spec)


def _metadata(source: ImportSource, output: str, spec: GPTSpec, config: dict[str, Any],
              identity: dict[str, Any], inputs: list[dict[str, Any]], dtype: str,
              states: list[str]) -> dict[str, Any]:
    return {
        "metadata_version": METADATA_VERSION,
        "code_version": code_version(),
        "iteration": 0,
        "consumed_samples": 0,
        "zero_stage": 0,
        "scheduler": {},
        "data": None,
        "config": config,
        "model": asdict(spec),
        "tokenizer": {**identity, "vocab_size": spec.original_vocab_size},
        "limits": source.limits(),
        "import": {
            "format": source.format,
            "source": os.path.abspath(source.path),
            "architecture": getattr(source, "architecture", None),
            "hf_class": getattr(source, "hf_class", None),
            "dtype": dtype,
            "optimizer_states": states,
            "inputs": inputs,
        },
        # Full tensors, as if saved by one rank: the trainer's load log reads these.
        "universal": {"source": os.path.abspath(source.path), "format": source.format,
                      "tp": 1, "pp": 1, "dp": 1, "zero_stage": 0},
    }
