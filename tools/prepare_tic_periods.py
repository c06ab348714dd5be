#!/usr/bin/env python3
"""A TiC-LM-style folder of periods from real text whose order is real: IDLE's change log.

The standard library ships IDLE's release notes (``idlelib/HISTORY.txt``, ``NEWS2x.txt``,
``NEWS.txt``): entries written release after release from IDLEfork 0.8 (2001) to IDLE 3.11
(2022). Each entry (a paragraph) is one document; the releases are grouped into periods named
by the year their first release came out:

    demo_periods/2001/docs.jsonl   IDLEfork 0.8 .. IDLE 2.7      (HISTORY.txt, NEWS2x.txt)
    demo_periods/2009/docs.jsonl   IDLE 3.1 .. 3.5               (NEWS.txt)
    demo_periods/2016/docs.jsonl   IDLE 3.6 .. 3.7
    demo_periods/2019/docs.jsonl   IDLE 3.8 .. 3.11

Raw JSONL on purpose: ``continual_run.py --parent-dataset-manifest demo_periods/`` tokenizes
each period with the plan's tokenizer on first use (and holds out every 10th entry):

    python tools/prepare_tic_periods.py --out demo_periods
    python tools/continual_run.py --plan ALCF/presets/tic-periods-demo.yaml \\
        --parent-dataset-manifest demo_periods/ --num-timesteps 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import sysconfig

# NEWS.txt is newest first: the text before the first heading is 2019's (3.8 .. 3.11), up to
# the second is 2016's (3.6 .. 3.7), the rest is 2009's (3.1 .. 3.5).
NEWS_SPLITS = (("2019", "What's New in IDLE 3.7.0"), ("2016", "What's New in IDLE 3.5.0"))


def entries(text: str) -> list[str]:
    """Paragraphs of a release-notes file that are entries (not headings or rules)."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = paragraph.strip()
        if len(paragraph) >= 40 and not paragraph.startswith(("What's New", "Released on", "====")):
            out.append(paragraph)
    return out


def periods(idlelib: str) -> dict[str, list[str]]:
    """Period name -> its entries, oldest first within a period."""
    def read(name: str) -> str:
        with open(os.path.join(idlelib, name), encoding="utf-8") as f:
            return f.read()

    # NEWS2x.txt and HISTORY.txt are newest first too: reverse their sections to oldest first.
    old = entries(read("HISTORY.txt"))[::-1] + entries(read("NEWS2x.txt"))[::-1]
    out = {"2001": old}
    news = read("NEWS.txt")
    for name, heading in NEWS_SPLITS:
        head, sep, tail = news.partition(heading)
        if not sep:
            sys.exit(f"prepare_tic_periods.py: error: no {heading!r} in NEWS.txt")
        out[name] = entries(head)[::-1]
        news = sep + tail
    out["2009"] = entries(news)[::-1]
    return dict(sorted(out.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_periods", help="the parent folder to write")
    args = p.parse_args(argv)
    idlelib = os.path.join(sysconfig.get_paths()["stdlib"], "idlelib")
    for name, docs in periods(idlelib).items():
        folder = os.path.join(args.out, name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "docs.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
        print(f"{folder}: {len(docs)} entries, {sum(len(d) for d in docs):,} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
