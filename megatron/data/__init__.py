"""Data: tokenizers, indexed datasets, data file lists, sample streams and samplers."""
