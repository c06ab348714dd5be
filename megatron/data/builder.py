"""Build the train/valid/test sample streams of a run from its plan."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from megatron.config.fields import ConfigError
from megatron.config.plan import RunPlan
from megatron.data.blend import BlendedStream
from megatron.data.data_list import DataEntry, parse_data_file_list
from megatron.data.indexed import open_indexed
from megatron.data.loader import MockStream
from megatron.data.sequences import SequenceDataset, split_documents

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True, slots=True)
class DataStreams:
    """Sample streams of a run; ``valid``/``test`` are None when their split is empty.

    Attributes:
        train: Training stream.
        valid: Validation stream.
        test: Test stream (never read during training).
        names: Dataset id -> ``corpus`` name, for per-corpus metrics.
    """

    train: object
    valid: object | None
    test: object | None
    names: tuple[str, ...]


def _split_streams(plan: RunPlan, entries: list[DataEntry]) -> dict[str, BlendedStream | None]:
    cfg = plan.config
    per_split: dict[str, list[SequenceDataset]] = {s: [] for s in SPLITS}
    for entry in entries:
        indexed = open_indexed(entry.prefix)
        try:
            ranges = split_documents(len(indexed), cfg.data.split_ratios)
        except ValueError as e:
            raise ConfigError(f"--split: {entry.source} ({entry.prefix}): {e}") from None
        for split, (start, stop) in zip(SPLITS, ranges, strict=True):
            if stop > start:
                try:
                    per_split[split].append(
                        SequenceDataset(
                            indexed, start, stop, plan.seq_length, cfg.train.seed,
                            name=f"{entry.prefix}:{split}",
                        )
                    )
                except ValueError as e:
                    raise ConfigError(f"--split: {entry.source}: {e}") from None
    weights = [e.weight for e in entries]
    return {
        split: BlendedStream(datasets, weights) if datasets else None
        for split, datasets in per_split.items()
    }


def build_streams(plan: RunPlan) -> DataStreams:
    """Open every dataset of the data file list and split it into train/valid/test streams."""
    cfg = plan.config
    if cfg.data.mock_data:
        vocab = plan.model.original_vocab_size
        return DataStreams(
            train=MockStream(vocab, plan.seq_length, cfg.train.seed),
            valid=MockStream(vocab, plan.seq_length, cfg.train.seed + 1),
            test=None,
            names=("mock",),
        )
    entries = parse_data_file_list(cfg.data.data_file_list)
    streams = _split_streams(plan, entries)
    for split in SPLITS:
        stream = streams[split]
        if stream is not None:
            samples = sum(d.samples_per_epoch for d in stream.datasets)
            log.info("data %s: %d datasets, %d samples per epoch", split, len(stream.datasets), samples)
    return DataStreams(
        train=streams["train"],
        valid=streams["valid"],
        test=streams["test"],
        names=tuple(e.corpus for e in entries),
    )
