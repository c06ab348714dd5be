"""Build the train/valid/test sample streams of a run from its plan.

Sources: one data file list split by ``--split`` per dataset, or separate
``--valid-data-file-list`` / ``--test-data-file-list`` (then the training list's documents
that ``--split`` gave to that split go to training instead). Every split is a two-level blend
(corpus, then file). ``--unique-tokens`` restricts training to a fixed subset of the blend that
each epoch revisits in a new order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from megatron.config.fields import ConfigError
from megatron.data.blend import BlendedStream, cached_blend
from megatron.data.data_list import DataEntry, parse_data_file_list
from megatron.data.indexed import open_indexed
from megatron.data.loader import MockStream
from megatron.data.sequences import SequenceDataset, shuffle_name, split_documents
from megatron.metadata.lossmask import open_lossmask
from megatron.metadata.variants import VariantSequenceDataset, open_variants
from megatron.plan.run import RunPlan

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True, slots=True)
class Split:
    """One split's stream and the corpus name of each of its dataset ids."""

    stream: object
    corpora: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DataStreams:
    """Sample streams of a run; ``valid``/``test`` are None when empty.

    Attributes:
        train: Training stream.
        valid: Validation stream.
        test: Test stream (never read during training).
    """

    train: Split
    valid: Split | None
    test: Split | None


class RepeatedSubset:
    """The first ``size`` samples of ``stream``, revisited every epoch in a new order.

    Epoch 0 reads them in blend order; epoch ``e > 0`` in a permutation seeded by (seed, e).
    """

    def __init__(self, stream: BlendedStream, size: int, seed: int):
        self.stream = stream
        self.size = size
        self.seed = seed
        self._perm: tuple[int, np.ndarray] | None = None

    def __getitem__(self, index: int) -> tuple[int, np.ndarray]:
        epoch, i = divmod(int(index), self.size)
        if epoch > 0:
            if self._perm is None or self._perm[0] != epoch:
                self._perm = (
                    epoch,
                    np.random.default_rng([self.seed, 11, epoch]).permutation(self.size),
                )
            i = int(self._perm[1][i])
        return self.stream[i]


def _ratios(plan: RunPlan) -> tuple[float, float, float]:
    """Document split of the training list: shares of splits with their own list go to train."""
    train, valid, test = plan.config.data.split_ratios
    if plan.config.data.valid_data_file_list is not None:
        train, valid = train + valid, 0.0
    if plan.config.data.test_data_file_list is not None:
        train, test = train + test, 0.0
    return train, valid, test


def _sequences(pairs: list, docs: tuple[int, int], plan: RunPlan, name: str):  # noqa: ANN202
    """The dataset of one split; K pre-drawn metadata variants read one per epoch."""
    made = [
        SequenceDataset(tokens, *docs, plan.seq_length, plan.config.train.seed, name, lossmask=mask)
        for tokens, mask in pairs
    ]
    return made[0] if len(made) == 1 else VariantSequenceDataset(made)


def _datasets(
    plan: RunPlan, entries: list[DataEntry], ratios: tuple[float, float, float], flag: str
) -> dict[str, list[tuple[DataEntry, SequenceDataset]]]:
    cfg = plan.config
    per_split: dict[str, list[tuple[DataEntry, SequenceDataset]]] = {s: [] for s in SPLITS}
    for entry in entries:
        indexed = open_indexed(entry.prefix)
        lossmask = open_lossmask(entry.prefix, indexed) if cfg.data.metadata_loss_mask else None
        variants = open_variants(entry.prefix, indexed, cfg.data.metadata_loss_mask)
        try:
            ranges = split_documents(len(indexed), ratios)
        except ValueError as e:
            raise ConfigError(f"--split: {entry.source} ({entry.prefix}): {e}") from None
        for split, (start, stop) in zip(SPLITS, ranges, strict=True):
            if stop > start:
                try:
                    dataset = _sequences(
                        [(indexed, lossmask), *variants],
                        (start, stop),
                        plan,
                        shuffle_name(entry.prefix, len(indexed), split),
                    )
                except ValueError as e:
                    if split == "train":
                        raise ConfigError(f"{flag}: {entry.source}: {e}") from None
                    # A small file's evaluation share may not fill one sample; the other
                    # datasets still evaluate.
                    log.warning("%s: %s; left out of the %s split", entry.source, e, split)
                    continue
                per_split[split].append((entry, dataset))
    return per_split


def _blend(
    plan: RunPlan,
    members: list[tuple[DataEntry, SequenceDataset]],
    size: int,
    is_builder: bool,
    barrier: Callable[[], None],
) -> BlendedStream:
    datasets = [d for _, d in members]
    weights = [e.weight for e, _ in members]
    groups = [e.corpus for e, _ in members]
    index = None
    cache = plan.config.data.data_cache_path
    if cache is not None and len(datasets) > 1:
        names = [d.name for d in datasets]
        started = time.perf_counter()
        if is_builder:
            cached_blend(cache, weights, groups, names, size, build=True)
        barrier()
        index = cached_blend(cache, weights, groups, names, size, build=False)
        log.info(
            "blend index: %d samples from %s in %.2f s", size, cache, time.perf_counter() - started
        )
    return BlendedStream(datasets, weights, groups, index=index)


def _check_subset(stream: BlendedStream, size: int, unique_tokens: int) -> None:
    counts = stream.counts_at(size)
    for dataset, count in zip(stream.datasets, counts, strict=True):
        if count > dataset.samples_per_epoch:
            raise ConfigError(
                f"--unique-tokens: {unique_tokens} tokens need {count} samples of {dataset.name}, "
                f"which holds {dataset.samples_per_epoch} unique samples; lower --unique-tokens "
                "or add data"
            )


def build_streams(
    plan: RunPlan, *, is_builder: bool = True, barrier: Callable[[], None] = lambda: None
) -> DataStreams:
    """Open every dataset of the data lists and build the train/valid/test streams.

    Args:
        plan: The resolved run.
        is_builder: This rank writes missing blend caches (rank 0).
        barrier: Waits for the builder (a process-group barrier in multi-rank runs).
    """
    cfg = plan.config
    if cfg.data.mock_data:
        vocab = plan.model.original_vocab_size
        return DataStreams(
            train=Split(MockStream(vocab, plan.seq_length, cfg.train.seed), ("mock",)),
            valid=Split(MockStream(vocab, plan.seq_length, cfg.train.seed + 1), ("mock",)),
            test=None,
        )
    per_split = _datasets(
        plan, parse_data_file_list(cfg.data.data_file_list), _ratios(plan), "--data-file-list"
    )
    for split, flag in (("valid", "--valid-data-file-list"), ("test", "--test-data-file-list")):
        path = getattr(cfg.data, f"{split}_data_file_list")
        if path is not None:
            entries = parse_data_file_list(path, flag=flag)
            per_split[split] = _datasets(plan, entries, (1.0, 0.0, 0.0), flag)["train"]
    eval_size = cfg.train.eval_iters * plan.global_batch_size
    subset = plan.unique_samples
    sizes = {
        "train": subset or plan.train_iters * plan.global_batch_size,
        "valid": eval_size,
        "test": eval_size,
    }
    splits: dict[str, Split | None] = {}
    for split in SPLITS:
        members = per_split[split]
        if not members:
            splits[split] = None
            continue
        stream = _blend(plan, members, sizes[split], is_builder, barrier)
        samples = sum(d.samples_per_epoch for _, d in members)
        log.info("data %s: %d datasets, %d samples per epoch", split, len(members), samples)
        corpora = tuple(e.corpus for e, _ in members)
        if split == "train" and subset is not None:
            _check_subset(stream, subset, cfg.data.unique_tokens)
            log.info(
                "data train: a fixed subset of %d samples, %.2f epochs",
                subset,
                plan.train_iters * plan.global_batch_size / subset,
            )
            stream = RepeatedSubset(stream, subset, cfg.train.seed)
        splits[split] = Split(stream, corpora)
    if splits["train"] is None:
        raise ConfigError("--split: no training documents; give the training split a share")
    return DataStreams(train=splits["train"], valid=splits["valid"], test=splits["test"])
