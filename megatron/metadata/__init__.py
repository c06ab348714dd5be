"""Metadata-conditioned training: prefixes, loss masks, the cooldown plan, paired evaluation.

Documents get a rendered metadata prefix (BigScience's ``url: ... | Year: 2019 |||`` or MeCo's
``URL: domain\\n\\n``) that occupies context but is never a training target; see
``docs/metadata.md``.
"""
