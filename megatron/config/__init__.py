"""Configuration: dataclass schema, the generated CLI, the environment reader, the run plan and
the generated DeepSpeed config. Torch-free: ``--help`` and ``--dry-run`` never import torch."""

from megatron.config.cli import ParsedArgs, parse_args
from megatron.config.env import DistEnv
from megatron.config.fields import ConfigError
from megatron.config.plan import RunPlan, resolve
from megatron.config.root import Config

__all__ = ["Config", "ConfigError", "DistEnv", "ParsedArgs", "RunPlan", "parse_args", "resolve"]
