"""Configuration: the dataclass knobs, the generated CLI and the environment reader. Imports no
other ``megatron`` package (the run plan built from a config is ``megatron.plan``). Torch-free:
``--help`` and ``--dry-run`` never import torch."""

from megatron.config.cli import ParsedArgs, parse_args
from megatron.config.env import DistEnv
from megatron.config.fields import ConfigError
from megatron.config.root import Config

__all__ = ["Config", "ConfigError", "DistEnv", "ParsedArgs", "parse_args"]
