"""``python -m rtda.train``: adversarial domain adaptation (or its source-only and target-only
baselines) of BiSeNet, resumable and distributed (``torchrun --nproc_per_node=N -m rtda.train``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rtda.checkpoints import CheckpointError
from rtda.data import DatasetError
from rtda.models import BACKBONES, DISCRIMINATORS
from rtda.train import checkpointing
from rtda.train.config import AMP_MODES, PRESETS, SOURCES, TARGETS, resolve_config
from rtda.train.run import Trainer, TrainingDiverged
from rtda.train.step import MODES

# flag -> config field, for the flags that override the configuration
OVERRIDES = {
    "mode": "mode", "fused": "fused", "backbone": "backbone", "pretrained": "pretrained",
    "discriminator": "discriminator", "source": "source", "source_root": "source_root",
    "source_list": "source_list", "target": "target", "target_root": "target_root",
    "target_list": "target_list", "resolution": "resolution", "batch_size": "batch_size",
    "iterations": "iterations", "schedule_iterations": "schedule_iterations",
    "seg_lr": "seg_lr", "d_lr": "d_lr", "lambda_adv": "lambda_adv", "momentum": "momentum",
    "weight_decay": "weight_decay", "poly_power": "poly_power", "amp": "amp", "seed": "seed",
    "device": "device", "workers": "workers", "log_every": "log_every",
    "val_every": "val_every", "val_images": "val_images",
    "checkpoint_every": "checkpoint_every", "sync_bn": "sync_bn", "flip": "flip", "out": "out",
}
DATASET_FLAGS = ("source", "target", "source_root", "target_root")
RESUME_FLAGS = {"iterations", "device", "workers"}  # may change when a run is resumed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rtda.train",
        description="Train BiSeNet with adversarial output-space adaptation (the paper's "
                    "method), or the source-only / target-only baselines. With no dataset flag "
                    "it trains on the built-in toy pair (generated if missing) with the small "
                    "'toy' preset. Values: the preset, then --config, then flags.")
    add = p.add_argument
    add("--preset", choices=tuple(PRESETS), default=None,
        help="paper (the paper's values; the default with a dataset), authors-code (the "
             "authors' code), toy (the default without a dataset flag)")
    add("--config", default=None, help="YAML or TOML file of config values")
    add("--mode", choices=MODES, default=None, help="adapt (default), source-only, target-only")
    add("--fused", action=argparse.BooleanOptionalAction, default=None,
        help="fused discriminator layers and adversarial losses (rtda_kernels)")
    add("--backbone", choices=BACKBONES, default=None)
    add("--pretrained", default=None, metavar="PATH",
        help="local torchvision ImageNet checkpoint of the backbone (never downloaded)")
    add("--discriminator", choices=DISCRIMINATORS, default=None)
    add("--source", choices=SOURCES, default=None)
    add("--target", choices=TARGETS, default=None)
    add("--source-root", default=None)
    add("--target-root", default=None)
    add("--source-list", default=None, help="list file selecting source images")
    add("--target-list", default=None, help="list file selecting target train images")
    add("--resolution", default=None, metavar="WxH", help="training size, e.g. 1024x512")
    add("--batch-size", type=int, default=None, help="global batch (split over processes)")
    add("--iterations", type=int, default=None)
    add("--schedule-iterations", type=int, default=None,
        help="poly schedule horizon (default: --iterations)")
    add("--seg-lr", type=float, default=None)
    add("--d-lr", type=float, default=None)
    add("--lambda-adv", type=float, default=None)
    add("--momentum", type=float, default=None)
    add("--weight-decay", type=float, default=None)
    add("--poly-power", type=float, default=None)
    add("--amp", choices=AMP_MODES, default=None)
    add("--seed", type=int, default=None)
    add("--device", default=None, help="auto (default), cpu, cuda, cuda:1, ...")
    add("--workers", type=int, default=None, help="data loading processes per stream")
    add("--log-every", type=int, default=None)
    add("--val-every", type=int, default=None)
    add("--val-images", type=int, default=None, help="score only the first N val images")
    add("--checkpoint-every", type=int, default=None)
    add("--sync-bn", action=argparse.BooleanOptionalAction, default=None)
    add("--flip", action=argparse.BooleanOptionalAction, default=None,
        help="random horizontal flips")
    add("--out", default=None, help="run directory (default: runs/<preset>-<mode>-seed<seed>)")
    add("--resume", default=None, metavar="DIR",
        help="continue the run in DIR from its newest checkpoint (its saved config is used)")
    add("--quiet", action="store_true", help="no progress bars")
    return p


def _given(args: argparse.Namespace) -> dict:
    return {field: getattr(args, flag) for flag, field in OVERRIDES.items()
            if getattr(args, flag) is not None}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = _given(args)
    try:
        resume_state = None
        if args.resume is not None:
            conflicts = sorted(set(given) - RESUME_FLAGS)
            conflicts += [name for name in ("preset", "config") if getattr(args, name)]
            if conflicts:
                parser.error("--resume continues with the run's saved config; it cannot be "
                             "combined with " + ", ".join(f"--{c.replace('_', '-')}"
                                                          for c in conflicts))
            path = checkpointing.latest(args.resume)
            resume_state = checkpointing.read(path)
            saved = dict(resume_state["config"])
            preset = saved.pop("preset")
            # the learning-rate schedule keeps its horizon when --iterations changes
            saved["schedule_iterations"] = saved["schedule_iterations"] or saved["iterations"]
            config = resolve_config(preset, overrides={**saved, **given, "out": args.resume})
            print(f"resuming {args.resume} from {path.name} (iteration "
                  f"{resume_state['iteration']})", file=sys.stderr)
        else:
            preset = args.preset or ("toy" if not any(k in given for k in DATASET_FLAGS)
                                     else "paper")
            config = resolve_config(preset, args.config, given)
            if "out" not in given:
                config.out = str(Path("runs") / f"{preset}-{config.mode}-seed{config.seed}")
        trainer = Trainer(config, resume=resume_state, progress=not args.quiet)
        result = trainer.train()
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (CheckpointError, DatasetError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if trainer.world.is_main:
        miou = result["val_miou"]
        print(f"{result['reason']} at iteration {result['iteration']} of {config.iterations}"
              + (f", val mIoU {100 * miou:.2f}" if miou is not None else "")
              + f"; checkpoints in {config.out}")
        if result["reason"] == "stopped":
            print(f"resume with: python -m rtda.train --resume {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
