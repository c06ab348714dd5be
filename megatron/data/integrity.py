"""Data integrity at open time: every corrupt or mismatched input is one line naming its file.

Checked before training reads a sample (and under ``--dry-run`` where it is cheap):

- ``.idx``: the magic, version, dtype code, and that the header's counts fit the file's size;
- ``.bin``: its length equals what the index says (a cut or padded file is refused);
- token ids below the vocabulary size (a cheap sample by default, every token with
  ``--check-data``);
- an empty dataset (no documents or no tokens);
- the dataset's ``<prefix>_meta.json`` sidecar (written by preprocessing): its tokenizer's type,
  file hashes and vocabulary size must match this run's tokenizer. Datasets without a sidecar
  (made before it existed) are accepted.
"""

from __future__ import annotations

from megatron.config.fields import ConfigError


class DataError(ConfigError):
    """A data file that cannot be trained on as given; the message names the file and the fix."""
