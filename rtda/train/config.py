"""Training configuration: one dataclass, the presets, config files and overrides.

Resolution order, later wins: the dataclass defaults, the preset, a YAML or TOML config file
(``--config``), then command-line flags. The preset is the one named by the flag ``--preset``,
else by the file's ``preset:`` key, else ``paper`` when a real dataset (GTA5, SYNTHIA, Cityscapes)
is named anywhere, else ``toy``. Every key of the file is honoured, ``out`` included; without
one the run goes to ``runs/<preset>-<mode>-seed<seed>``. The resolved configuration is saved with
the run (``config.yaml``) and in every checkpoint.

Presets:

* ``paper``: the values printed in the paper: BiSeNet-R101, FCD-Light&Thin, batch 4, SGD lr 2.5e-4
  (momentum 0.9, weight decay 5e-4), Adam (0.9, 0.99) lr 1e-5 for D, poly decay with power 0.9 for
  both, lambda_adv 0.01, 30k iterations, images resized to 1024x512.
* ``authors-code``: what the authors' public code uses instead: lambda_adv 0.001, D lr 2e-4, seg
  lr 5e-4, batch 2, 60k iterations of a 125k-iteration poly schedule.
* ``toy``: the embedded default on the built-in toy pair, small enough for a 2-core CPU: ResNet-18
  from scratch at 256x128.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import tomllib

from rtda.models import BACKBONES, DISCRIMINATORS
from rtda.train.step import METHODS, MODES

SOURCES = ("gta5", "synthia", "toy")
TARGETS = ("cityscapes", "toy")
AMP_MODES = ("off", "bf16", "fp16")


@dataclass
class TrainConfig:
    mode: str = "adapt"
    method: str = "adversarial"  # with mode adapt: adversarial | self-training | both
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
    ema_alpha: float = 0.99  # self-training: the teacher's EMA momentum (DACS)
    pseudo_threshold: float = 0.968  # confidence above which a pseudo-label counts (DACS)
    class_mix: bool = True  # self-training: ClassMix source classes onto target images
    rare_class_sampling: bool = True  # self-training: source images drawn by rare class
    rcs_temperature: float = 0.01  # DAFormer's
    warmup: int = 0  # iterations before self-training starts (adversarial, or source only)
    source_label: float = 0.0
    target_label: float = 1.0
    flip: bool = False
    amp: str = "off"
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    skip_bad: bool = False  # skip unreadable images (counted, logged) instead of stopping
    log_every: int = 10
    val_every: int = 1000
    val_images: int | None = None  # score only the first N val images (None: all)
    checkpoint_every: int = 1000
    sync_bn: bool = False
    out: str = "runs/rtda"
    preset: str = "paper"

    def validate(self) -> TrainConfig:
        def choice(name: str, options: tuple[str, ...]) -> None:
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {', '.join(options)}, "
                                 f"got {getattr(self, name)!r}")

        choice("mode", MODES)
        choice("method", METHODS)
        choice("backbone", BACKBONES)
        choice("discriminator", DISCRIMINATORS)
        choice("source", SOURCES)
        choice("target", TARGETS)
        choice("amp", AMP_MODES)
        for name in ("batch_size", "iterations", "log_every", "val_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("workers", "warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.ema_alpha < 1.0:
            raise ValueError(f"ema_alpha must be in [0, 1), got {self.ema_alpha}")
        if not 0.0 <= self.pseudo_threshold < 1.0:
            raise ValueError(f"pseudo_threshold must be in [0, 1), got {self.pseudo_threshold}")
        if len(self.resolution) != 2 or any(v <= 0 or v % 32 for v in self.resolution):
            raise ValueError(f"resolution must be WIDTHxHEIGHT, both multiples of 32, got "
                             f"{_wxh(self.resolution)}")
        if self.schedule_iterations is not None and self.schedule_iterations < self.iterations:
            raise ValueError(f"schedule_iterations ({self.schedule_iterations}) must be >= "
                             f"iterations ({self.iterations})")
        for name in ("seg_lr", "d_lr", "rcs_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.mode != "target-only" and self.source == "toy" and self.target != "toy":
            raise ValueError("the toy source only pairs with the toy target")
        return self

    @property
    def horizon(self) -> int:
        return self.schedule_iterations or self.iterations

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "authors-code": {"lambda_adv": 0.001, "d_lr": 2e-4, "seg_lr": 5e-4, "batch_size": 2,
                     "iterations": 60000, "schedule_iterations": 125000},
    "toy": {"backbone": "resnet18", "source": "toy", "target": "toy", "resolution": (128, 256),
            "batch_size": 4, "iterations": 300, "seg_lr": 1e-2, "d_lr": 1e-4, "flip": True,
            "val_every": 100, "checkpoint_every": 100, "log_every": 10},
}

FIELDS = tuple(f.name for f in fields(TrainConfig))
DATASET_KEYS = ("source", "target", "source_root", "target_root")


def _wxh(size) -> str:
    """(height, width) as the command line writes it."""
    return "x".join(str(v) for v in reversed(tuple(size))) if len(size) == 2 else str(size)


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


def default_preset(values: dict[str, Any]) -> str:
    """``paper`` when ``values`` name a real dataset (or a root without naming the toy pair)."""
    names = [values.get(k) for k in ("source", "target") if values.get(k) is not None]
    if any(name != "toy" for name in names):
        return "paper"
    if not names and any(values.get(k) is not None for k in ("source_root", "target_root")):
        return "paper"  # roots of the paper's default datasets (GTA5 -> Cityscapes)
    return "toy"


def resolve_config(preset: str | None = None, config_file: str | Path | None = None,
                   overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The preset, then the file, then ``overrides`` (None values are skipped), validated.

    ``preset`` None: the file's ``preset:``, else :func:`default_preset` of the file and the
    overrides together. ``out`` unset in both: ``runs/<preset>-<mode>-seed<seed>``.
    """
    from_file = read_config_file(config_file) if config_file is not None else {}
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    for source, values in ((f"config file {config_file}", from_file), ("overrides", given)):
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown key{'s' * (len(unknown) > 1)} in {source}: "
                             f"{', '.join(unknown)} (valid keys: {', '.join(FIELDS)})")
    preset = preset or from_file.get("preset") or default_preset({**from_file, **given})
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    values = {**PRESETS[preset], **from_file, **given, "preset": preset}
    config = TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})
    if "out" not in values:
        config.out = str(Path("runs") / f"{preset}-{config.mode}-seed{config.seed}")
    return config.validate()


def summary(config: TrainConfig) -> str:
    """The resolved configuration in a few lines of ``key=value`` (printed at the start)."""
    items = [f"{k}={_wxh(v) if k == 'resolution' else v}" for k, v in config.as_dict().items()]
    return textwrap.fill(" ".join(items), width=100, initial_indent="config: ",
                         subsequent_indent="  ", break_on_hyphens=False)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """``config.yaml`` of a run; the resolution written ``WIDTHxHEIGHT``, as the flag takes it."""
    import yaml

    data = {**config.as_dict(), "resolution": _wxh(config.resolution)}
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
