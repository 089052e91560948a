"""Training configuration: one dataclass, the presets, config files and overrides.

Resolution order, later wins: the dataclass defaults, the preset (``--preset``), a YAML or TOML
config file (``--config``), then command-line flags. The resolved configuration is saved with
the run (``config.yaml``) and in every checkpoint.

Presets:

* ``paper``: the values printed in the paper: BiSeNet-R101, FCD-Light&Thin, batch 4, SGD lr 2.5e-4
  (momentum 0.9, weight decay 5e-4), Adam (0.9, 0.99) lr 1e-5 for D, poly decay with power 0.9 for
  both, lambda_adv 0.01, 30k iterations, images resized to 1024x512.
* ``authors-code``: what the authors' public code uses instead: lambda_adv 0.001, D lr 2e-4, seg
  lr 5e-4, batch 2, 60k iterations of a 125k-iteration poly schedule.
* ``toy``: the embedded default on the built-in toy pair, small enough for a 2-core CPU: ResNet-18
  from scratch at 256x128. It is chosen when no dataset flag and no preset is given.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from rtda.models import BACKBONES, DISCRIMINATORS
from rtda.train.step import MODES

SOURCES = ("gta5", "synthia", "toy")
TARGETS = ("cityscapes", "toy")
AMP_MODES = ("off", "bf16", "fp16")


@dataclass
class TrainConfig:
    mode: str = "adapt"
    fused: bool = False
    backbone: str = "resnet101"
    pretrained: str | None = None
    discriminator: str = "fcd_light_thin"
    source: str = "gta5"
    source_root: str | None = None
    source_list: str | None = None
    target: str = "cityscapes"
    target_root: str | None = None
    target_list: str | None = None
    resolution: tuple[int, int] = (512, 1024)  # (height, width) of every training image
    batch_size: int = 4  # global: split over the processes of a distributed run
    iterations: int = 30000
    schedule_iterations: int | None = None  # poly horizon; None: = iterations
    seg_lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    d_lr: float = 1e-5
    d_betas: tuple[float, float] = (0.9, 0.99)
    lambda_adv: float = 0.01
    source_label: float = 0.0
    target_label: float = 1.0
    flip: bool = False
    amp: str = "off"
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    log_every: int = 10
    val_every: int = 1000
    val_images: int | None = None  # score only the first N val images (None: all)
    checkpoint_every: int = 1000
    sync_bn: bool = False
    out: str = "runs/rtda"
    preset: str = "paper"
    extra: dict[str, Any] = field(default_factory=dict)  # reserved: unknown keys are errors

    def validate(self) -> TrainConfig:
        def choice(name: str, options: tuple[str, ...]) -> None:
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {', '.join(options)}, "
                                 f"got {getattr(self, name)!r}")

        choice("mode", MODES)
        choice("backbone", BACKBONES)
        choice("discriminator", DISCRIMINATORS)
        choice("source", SOURCES)
        choice("target", TARGETS)
        choice("amp", AMP_MODES)
        for name in ("batch_size", "iterations", "log_every", "val_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if len(self.resolution) != 2 or any(v <= 0 or v % 32 for v in self.resolution):
            raise ValueError(f"resolution must be (height, width), multiples of 32, got "
                             f"{self.resolution}")
        if self.schedule_iterations is not None and self.schedule_iterations < self.iterations:
            raise ValueError(f"schedule_iterations ({self.schedule_iterations}) must be >= "
                             f"iterations ({self.iterations})")
        for name in ("seg_lr", "d_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.mode != "target-only" and self.source == "toy" and self.target != "toy":
            raise ValueError("the toy source only pairs with the toy target")
        if self.extra:
            raise ValueError(f"unknown config keys: {', '.join(sorted(self.extra))}")
        return self

    @property
    def horizon(self) -> int:
        return self.schedule_iterations or self.iterations

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("extra")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "authors-code": {"lambda_adv": 0.001, "d_lr": 2e-4, "seg_lr": 5e-4, "batch_size": 2,
                     "iterations": 60000, "schedule_iterations": 125000},
    "toy": {"backbone": "resnet18", "source": "toy", "target": "toy", "resolution": (128, 256),
            "batch_size": 4, "iterations": 300, "seg_lr": 1e-2, "d_lr": 1e-4, "flip": True,
            "val_every": 100, "checkpoint_every": 100, "log_every": 10},
}

_FIELDS = {f.name: f for f in fields(TrainConfig) if f.name != "extra"}


def _coerce(name: str, value: Any) -> Any:
    default = getattr(TrainConfig, name, None)
    if name == "resolution" and isinstance(value, str):
        from rtda.data.transforms import parse_size

        return parse_size(value)  # "WIDTHxHEIGHT", as the paper and the command line write it
    if name in ("resolution", "d_betas"):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        return tuple(type(default[0])(v) for v in value)
    return value


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML (.yaml/.yml) or TOML (.toml) file; JSON is YAML too."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as err:
        raise ValueError(f"cannot parse config file {path}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping, not {type(data).__name__}")
    return {k.replace("-", "_"): v for k, v in data.items()}


def resolve_config(preset: str = "paper", config_file: str | Path | None = None,
                   overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The preset, then the file, then ``overrides`` (None values are skipped), validated."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    values: dict[str, Any] = {"preset": preset, **PRESETS[preset]}
    if config_file is not None:
        values.update(read_config_file(config_file))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = {k: v for k, v in values.items() if k not in _FIELDS}
    known = {k: _coerce(k, v) for k, v in values.items() if k in _FIELDS}
    return TrainConfig(**known, extra=unknown).validate()


def save_config(config: TrainConfig, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(config.as_dict(), sort_keys=False))
