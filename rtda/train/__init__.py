"""Training: the adaptation step, configs and presets, checkpoints, the loop, distributed glue."""

from rtda.train.config import PRESETS, TrainConfig, resolve_config
from rtda.train.step import MODES, StepSettings, train_step

__all__ = ["MODES", "PRESETS", "StepSettings", "TrainConfig", "resolve_config", "train_step"]
