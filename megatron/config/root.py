"""The root config: one typed section per concern. The single source of truth for every knob."""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron.config.checkpoint import CheckpointConfig
from megatron.config.data import DataConfig
from megatron.config.fields import SECTION
from megatron.config.logs import LoggingConfig
from megatron.config.model import ModelConfig
from megatron.config.objective import ObjectiveConfig
from megatron.config.optim import OptimConfig
from megatron.config.parallel import ParallelConfig
from megatron.config.regularize import RegularizeConfig
from megatron.config.scaling import ScalingConfig
from megatron.config.schedule import ScheduleConfig
from megatron.config.train import TrainConfig


@dataclass(**SECTION)
class Config:
    """Everything a run is configured with. Derived values live in ``RunPlan``, not here."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    regularize: RegularizeConfig = field(default_factory=RegularizeConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
