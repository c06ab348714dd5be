"""A real HTML corpus: the pages ``pydoc`` renders for standard-library modules.

Nobody here wrote them: the text is the modules' own docstrings and signatures, the structure
(tables, definition lists, links, ``class`` attributes) is pydoc's. Each page becomes a
records document (``html_records.html_to_record``) with its url
(``https://docs.python.org/3/library/<module>.html``) and title (``Python: module <name>``);
machine-specific paths in the pages are replaced by ``<stdlib>``.
"""

from __future__ import annotations

import importlib
import logging
import os
import pydoc
import warnings

from megatron.metadata.html_records import html_to_record

log = logging.getLogger(__name__)

MODULES = (
    "abc argparse ast base64 bisect calendar cmd codecs collections colorsys configparser "
    "contextlib copy csv dataclasses datetime decimal difflib dis email.message enum filecmp "
    "fnmatch fractions ftplib functools getopt gettext glob graphlib gzip hashlib heapq hmac html "
    "html.parser http.client http.cookies imaplib inspect io ipaddress json json.decoder "
    "json.encoder keyword linecache locale logging logging.handlers lzma mailbox mimetypes "
    "netrc numbers operator optparse pathlib pickle pkgutil platform plistlib poplib pprint "
    "queue quopri random re secrets selectors shelve shlex shutil smtplib socketserver "
    "statistics string stringprep struct subprocess tarfile tempfile textwrap threading "
    "timeit tokenize trace traceback types typing unittest.case urllib.parse urllib.request "
    "uuid warnings wave weakref xml.dom.minidom xml.etree.ElementTree zipfile zipimport"
).split()


def pydoc_page(name: str) -> str:
    """pydoc's HTML page of module ``name``."""
    module = importlib.import_module(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        page = pydoc.html.page(pydoc.describe(module), pydoc.html.document(module, name))
    stdlib = os.path.dirname(os.__file__)
    return page.replace(stdlib, "<stdlib>")


def pydoc_records(modules: tuple[str, ...] = MODULES) -> list[dict]:
    """One records document per module (modules that fail to import are skipped, logged)."""
    out = []
    for name in modules:
        try:
            page = pydoc_page(name)
        except Exception as e:  # noqa: BLE001 - an optional module missing on this Python
            log.warning("pydoc %s: skipped (%s)", name, e)
            continue
        top = name.split(".")[0]
        out.append(html_to_record(page, f"https://docs.python.org/3/library/{top}.html"))
    return out


def write_pydoc_corpus(
    out_dir: str, eval_every: int = 10, train_chars: int = 1000, eval_chars: int = 150
) -> tuple[int, int]:
    """``train.jsonl`` and ``eval.jsonl`` (every ``eval_every``-th module held out) of cut pages.

    Returns:
        (training documents, evaluation documents).
    """
    import json

    os.makedirs(out_dir, exist_ok=True)
    from megatron.metadata.html_records import cut_record

    counts = [0, 0]
    records = pydoc_records()
    with (
        open(os.path.join(out_dir, "train.jsonl"), "w") as train,
        open(os.path.join(out_dir, "eval.jsonl"), "w") as held_out,
    ):
        for i, record in enumerate(records):
            evaluation = i % eval_every == eval_every - 1
            for piece in cut_record(record, eval_chars if evaluation else train_chars):
                if piece["text"].strip():
                    (held_out if evaluation else train).write(json.dumps(piece) + "\n")
                    counts[evaluation] += 1
    return counts[0], counts[1]
