"""Loader cost of local metadata with K pre-drawn variants, against the plain loader, same run.

Real HTML (pydoc's pages of 12 standard-library modules) is preprocessed twice: plain text, and
records with html inline (masked), per-example draws and K = 4 variants. Both are read through
the training datasets (``SequenceDataset`` / ``VariantSequenceDataset``) at the same random
sample indices spanning several epochs; the ratio of the time per sample is printed (goal:
<= 1.3x). Re-drawing per epoch costs no tokenizing: the variants were written once.

    .venv/bin/python bench/metadata_loader.py [--samples 20000] [--variants 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

import numpy as np  # noqa: E402

from megatron.config.data import DataConfig  # noqa: E402
from megatron.data.indexed import open_indexed  # noqa: E402
from megatron.data.sequences import SequenceDataset  # noqa: E402
from megatron.metadata.html_records import cut_record  # noqa: E402
from megatron.metadata.local_preprocess import LocalOptions, tokenize_records  # noqa: E402
from megatron.metadata.pydoc_corpus import MODULES, pydoc_records  # noqa: E402
from megatron.metadata.sampling import SamplingOptions  # noqa: E402
from megatron.metadata.variants import VariantSequenceDataset, open_variants  # noqa: E402
from megatron.metadata.lossmask import open_lossmask  # noqa: E402

BYTE = DataConfig(tokenizer_type="byte")


def _time(datasets: dict, indices: np.ndarray, repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` seconds per sample of each dataset, the datasets interleaved (the box
    is shared: interleaving spreads load changes over all of them)."""
    best = dict.fromkeys(datasets, float("inf"))
    for _ in range(repeats):
        for name, dataset in datasets.items():
            started = time.perf_counter()
            for i in indices:
                dataset[int(i)]
            best[name] = min(best[name], (time.perf_counter() - started) / len(indices))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--variants", type=int, default=4)
    p.add_argument("--seq-length", type=int, default=512)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp())
    docs = [piece for r in pydoc_records(MODULES[:12]) for piece in cut_record(r, 1000)]
    path = root / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    sampling = SamplingOptions(probability=0.5, random_sample=True,
                               weights={"html": 1.0, "title": 1.0, "url": 1.0}, seed=1)  # fmt: skip
    started = time.perf_counter()
    plain = tokenize_records([str(path)], str(root / "plain"), BYTE,
                             LocalOptions(("html",), SamplingOptions(probability=0.0)))
    t_plain = time.perf_counter() - started
    started = time.perf_counter()
    local = tokenize_records([str(path)], str(root / "local"), BYTE,
                             LocalOptions(("html", "title", "url"), sampling, variants=args.variants))
    t_local = time.perf_counter() - started
    tokens = open_indexed(plain.text_prefixes[0])
    base = SequenceDataset(tokens, 0, len(tokens), args.seq_length, 1, "bench")
    meta_tokens = open_indexed(local.text_prefixes[0])
    pairs = [(meta_tokens, open_lossmask(local.text_prefixes[0], meta_tokens)),
             *open_variants(local.text_prefixes[0], meta_tokens, True)]
    variants = VariantSequenceDataset(
        [SequenceDataset(t, 0, len(t), args.seq_length, 1, "bench", lossmask=m) for t, m in pairs]
    )
    masked_one = SequenceDataset(*pairs[0][:1], 0, len(meta_tokens), args.seq_length, 1, "bench",
                                 lossmask=pairs[0][1])  # fmt: skip
    # as training reads: consecutive sample indices (shuffled within each epoch by the dataset),
    # here across several epochs, so every variant and every epoch change is included
    indices = np.arange(args.samples) + variants.cycle // 2
    _time({"warm": base, "warm2": variants, "warm3": masked_one}, indices[:500], 1)
    t = _time({"base": base, "variants": variants, "one": masked_one}, indices)
    s_base, s_var, s_one = t["base"], t["variants"], t["one"]
    epochs = variants.locate(int(indices[-1]))[0] - variants.locate(int(indices[0]))[0] + 1
    print(f"corpus: {len(docs)} documents ({sum(len(d['text']) for d in docs):,} characters); "
          f"{args.variants} variants; {args.samples} consecutive samples of {args.seq_length + 1} tokens "
          f"({epochs} epochs of the variant dataset)")
    print(f"preprocess: plain {t_plain:.1f} s, {args.variants} variants {t_local:.1f} s "
          f"({t_local / t_plain:.2f}x, once)")
    print(f"plain loader:            {s_base * 1e6:8.1f} us/sample")
    print(f"1 variant + loss mask:   {s_one * 1e6:8.1f} us/sample  ({s_one / s_base:.2f}x plain)")
    print(f"{args.variants} variants + loss mask:  {s_var * 1e6:8.1f} us/sample  "
          f"({s_var / s_base:.2f}x plain; goal <= 1.3x)")


if __name__ == "__main__":
    main()
