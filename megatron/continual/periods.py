"""TiC-LM's monthly folders as continual stages: ``periods_from: DIR``
(``tools/continual_run.py --parent-dataset-manifest DIR``).

``DIR`` holds one folder per period (``201305/``, ``201312/``, ... or any names that sort: names
are compared as numbers where they are digits, so ``9`` < ``10``; names mixing numbers and words
in a way that does not sort are refused). Each period folder holds one kind of data:

- ``manifest.jsonl`` (``periods_manifest`` / ``--suffixes``) and open_lm-style tokenized ``.tar``
  shards: converted to an indexed dataset once (``megatron.data.webdataset``); with
  ``try_balanced_manifest`` (``--try-balanced-manifest``) ``manifest_balanced.jsonl`` is used
  when the folder has one, as TiC-LM does;
- our indexed datasets (``*.bin`` + ``*.idx``): used as they are;
- raw text (``.jsonl[.gz|.zst]``, ``.json``, ``.parquet``, ``.arrow``): tokenized with the
  plan's tokenizer on first use and reused afterwards.

The held-out data of a period is its ``eval/`` sub-folder (same kinds), or else every
``periods_heldout_every``-th document (default 10) is moved to a held-out dataset. Prepared
datasets and the stage's two data file lists go to ``<periods_cache>/<tokenizer>/<period>/``
(default cache: ``<output_dir>/periods-cache``) with a ``PREPARED.json`` fingerprint (sources'
sizes and times, tokenizer, held-out rule): a changed source is prepared again.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from megatron.config.data import DataConfig
from megatron.config.fields import ConfigError

log = logging.getLogger(__name__)

SELECTION_KEYS = ("num_timesteps", "starting_timestep", "ending_timestep", "time_range")
"""Override locations that pick periods (``--num-timesteps`` and friends)."""

TOKENIZER_KEYS = ("tokenizer_type", "tokenizer_model", "vocab_file", "merge_file", "vocab_size")


@dataclass(frozen=True, slots=True)
class Period:
    """One period folder: ``key`` (its name, the stage key) and ``path``."""

    key: str
    path: str


def natural_key(name: str) -> tuple:
    """``"2013-05"`` -> ``(2013, "-", 5)``: digit runs compare as numbers."""
    return tuple(int(part) if part.isdigit() else part
                 for part in re.split(r"(\d+)", name) if part != "")


def _sorted(names: list[str], where: str) -> list[str]:
    try:
        return sorted(names, key=natural_key)
    except TypeError:
        raise ConfigError(f"{where}: period folders {names} do not sort (names mix numbers and "
                          "words at the same place); name them so they sort, e.g. YYYYMM") from None


def discover_periods(parent: str, where: str = "periods_from") -> list[Period]:
    """The period folders of ``parent``, in period order.

    Raises:
        ConfigError: No such directory, no period folder, or names that do not sort.
    """
    if not os.path.isdir(parent):
        raise ConfigError(f"{where}: no such directory {parent}")
    names = [n for n in os.listdir(parent)
             if os.path.isdir(os.path.join(parent, n)) and not n.startswith((".", "_"))]
    if not names:
        raise ConfigError(f"{where}: {parent} holds no period folder (expected one folder per "
                          "period, e.g. 201305/ 201312/)")
    return [Period(n, os.path.join(os.path.abspath(parent), n)) for n in _sorted(names, where)]


def select_periods(periods: list[Period], selection: dict[str, Any]) -> list[Period]:
    """Apply ``--time-range A:B``, ``--starting-timestep``, ``--ending-timestep`` (inclusive, in
    period order) and ``--num-timesteps N`` (the first N left), as TiC-LM does.

    Raises:
        ConfigError: A malformed range, or nothing left.
    """
    start, end = selection.get("starting_timestep"), selection.get("ending_timestep")
    if selection.get("time_range"):
        if ":" not in selection["time_range"]:
            raise ConfigError(f"--time-range: expected A:B, got {selection['time_range']!r}")
        start, end = selection["time_range"].split(":", 1)
    try:
        kept = [p for p in periods
                if (start is None or natural_key(p.key) >= natural_key(str(start)))
                and (end is None or natural_key(p.key) <= natural_key(str(end)))]
    except TypeError:
        raise ConfigError(f"--starting-timestep/--ending-timestep: {start!r}..{end!r} does not "
                          f"compare with the period names {[p.key for p in periods]}") from None
    if selection.get("num_timesteps") is not None:
        kept = kept[: int(selection["num_timesteps"])]
    if not kept:
        raise ConfigError(f"--starting-timestep/--ending-timestep/--time-range/--num-timesteps: no "
                          f"period left of {[p.key for p in periods]}")
    return kept


@dataclass(frozen=True, slots=True)
class Sources:
    """What a folder holds: ``kind`` (webdataset, indexed, raw) and its files."""

    kind: str
    files: tuple[str, ...]


def find_sources(folder: str, manifest: str, try_balanced: bool) -> Sources | None:
    """The data of ``folder`` (not its sub-folders), or None when it holds none."""
    from megatron.data.readers import format_of

    path = os.path.join(folder, manifest)
    balanced = path.replace(".jsonl", "_balanced.jsonl")
    if try_balanced and os.path.isfile(balanced):
        return Sources("webdataset", (balanced,))
    if os.path.isfile(path):
        if try_balanced:
            log.info("%s: no %s, using %s", folder, os.path.basename(balanced), manifest)
        return Sources("webdataset", (path,))
    indexed = [p[: -len(".idx")] for p in sorted(glob.glob(os.path.join(folder, "*.idx")))
               if os.path.isfile(p[: -len(".idx")] + ".bin")]
    if indexed:
        return Sources("indexed", tuple(indexed))
    raw = [os.path.join(folder, n) for n in sorted(os.listdir(folder))
           if os.path.isfile(os.path.join(folder, n))
           and format_of(n) in ("jsonl", "parquet", "arrow")
           and not n.startswith(os.path.splitext(manifest)[0])]
    return Sources("raw", tuple(raw)) if raw else None


def plan_tokenizer(raw: dict[str, Any]) -> DataConfig:
    """The tokenizer the plan's stages train with (its ``config`` file, then its ``args``)."""
    values: dict[str, Any] = {}
    if raw.get("config") and os.path.isfile(raw["config"]):
        import yaml

        with open(raw["config"]) as f:
            loaded = yaml.safe_load(f) or {}
        values.update({k: v for k, v in loaded.items() if k in TOKENIZER_KEYS})
    values.update({k: v for k, v in (raw.get("args") or {}).items() if k in TOKENIZER_KEYS})
    return DataConfig(**values)


def _fingerprint(sources: Sources, eval_sources: Sources | None, tokenizer: dict,
                 every: int) -> dict:
    def stat(path: str) -> list:
        files = [path + ext for ext in (".bin", ".idx")] if sources.kind == "indexed" else [path]
        return [[f, os.path.getsize(f), os.stat(f).st_mtime_ns] for f in files if os.path.exists(f)]

    listed = [s for group in (sources, eval_sources) if group for s in group.files]
    return {"kind": sources.kind, "sources": [stat(p) for p in listed], "tokenizer": tokenizer,
            "heldout_every": every, "eval_folder": eval_sources is not None}


def _build(sources: Sources, prefix: str, cfg: DataConfig, vocab_size: int) -> list[str]:
    """Indexed prefixes holding ``sources`` (tokenized or converted into ``prefix`` if needed)."""
    if sources.kind == "indexed":
        return list(sources.files)
    if sources.kind == "webdataset":
        from megatron.data.webdataset import convert_manifest

        convert_manifest(sources.files[0], prefix + "_text_document", vocab_size)
        return [prefix + "_text_document"]
    from megatron.data.preprocess import tokenize_to_indexed

    stats = tokenize_to_indexed(list(sources.files), prefix, cfg, on_progress=lambda p: None)
    return [stats.prefixes["text"]]


def split_heldout(prefixes: list[str], train: str, heldout: str, every: int,
                  vocab_size: int) -> None:
    """Copy the documents of ``prefixes`` into ``train`` and ``heldout`` (every ``every``-th)."""
    from megatron.data.indexed import IndexedWriter, open_indexed

    index = 0
    with IndexedWriter(train, vocab_size) as kept, IndexedWriter(heldout, vocab_size) as held:
        for prefix in prefixes:
            dataset = open_indexed(prefix)
            for i in range(len(dataset)):
                (held if index % every == every - 1 else kept).add_document(dataset[i])
                index += 1
    if index < every:
        raise ConfigError(f"{os.path.dirname(train)}: {index} documents, fewer than "
                          f"periods_heldout_every={every}: the held-out set would be empty; add "
                          "an eval/ folder or lower periods_heldout_every")


def _write_list(path: str, prefixes: list[str], corpus: str) -> str:
    with open(path, "w") as f:
        f.writelines(f"1.0 {p} {corpus}\n" for p in prefixes)
    return path


def prepare_period(period: Period, cache: str, cfg: DataConfig, *, manifest: str,
                   try_balanced: bool, heldout_every: int) -> tuple[str, str]:
    """The period's training and held-out data file lists (prepared once, then reused)."""
    from megatron.data.sidecar import tokenizer_record
    from megatron.data.tokenizers import build_tokenizer

    sources = find_sources(period.path, manifest, try_balanced)
    if sources is None:
        raise ConfigError(f"periods_from: {period.path} holds no data: expected {manifest} with "
                          ".tar shards, indexed .bin/.idx pairs, or .jsonl/.parquet/.arrow files")
    eval_dir = os.path.join(period.path, "eval")
    eval_sources = (find_sources(eval_dir, manifest, try_balanced)
                    if os.path.isdir(eval_dir) else None)
    vocab_size = build_tokenizer(cfg).vocab_size
    record = tokenizer_record(cfg, vocab_size)
    tag = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:10]
    out = os.path.join(cache, f"{cfg.tokenizer_type}-{tag}", period.key)
    marker = os.path.join(out, "PREPARED.json")
    lists = (os.path.join(out, "train.txt"), os.path.join(out, "heldout.txt"))
    fingerprint = _fingerprint(sources, eval_sources, record, heldout_every)
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) == fingerprint:
                return lists
    os.makedirs(out, exist_ok=True)
    log.info("period %s: preparing %s data from %s", period.key, sources.kind, period.path)
    full = _build(sources, os.path.join(out, "all"), cfg, vocab_size)
    if eval_sources is not None:
        train, heldout = full, _build(eval_sources, os.path.join(out, "eval"), cfg, vocab_size)
    else:
        train, heldout = [os.path.join(out, "train")], [os.path.join(out, "heldout")]
        split_heldout(full, train[0], heldout[0], heldout_every, vocab_size)
    _write_list(lists[0], train, period.key)
    _write_list(lists[1], heldout, period.key)
    with open(marker, "w") as f:
        json.dump(fingerprint, f, indent=1)
    return lists


def expand_periods(raw: dict[str, Any], selection: dict[str, Any], path: str) -> dict[str, Any]:
    """The plan ``raw`` with one stage per selected period of ``raw["periods_from"]``.

    Raises:
        ConfigError: The plan also lists stages, or a period cannot be prepared.
    """
    if raw.get("stages"):
        raise ConfigError(f"{path}: periods_from and stages: give one (periods_from makes one "
                          "stage per period folder)")
    every = raw.get("periods_heldout_every", 10)
    if not isinstance(every, int) or isinstance(every, bool) or every < 2:
        raise ConfigError(f"{path}: periods_heldout_every must be an integer >= 2, got {every!r}")
    periods = select_periods(discover_periods(str(raw["periods_from"])), selection)
    cache = raw.get("periods_cache") or os.path.join(raw.get("output_dir", "outputs/cpt"),
                                                     "periods-cache")
    cfg = plan_tokenizer(raw)
    stages = []
    for period in periods:
        data, heldout = prepare_period(
            period, os.path.abspath(cache), cfg,
            manifest=raw.get("periods_manifest", "manifest.jsonl"),
            try_balanced=bool(raw.get("try_balanced_manifest", False)), heldout_every=every)
        stages.append({"key": period.key, "data": data, "eval_data": heldout})
    log.info("periods_from %s: %d stages %s", raw["periods_from"], len(stages),
             [p.key for p in periods])
    return {**raw, "stages": stages}
