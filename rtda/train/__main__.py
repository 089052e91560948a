"""``python -m rtda.train``: adversarial domain adaptation (or its source-only and target-only
baselines) of BiSeNet, resumable and distributed (``torchrun --nproc_per_node=N -m rtda.train``)."""

from __future__ import annotations

import argparse
import sys

from rtda.checkpoint_io import CheckpointError
from rtda.cli import add_version
from rtda.data import DatasetError
from rtda.models import BACKBONES, DISCRIMINATORS
from rtda.train import run_checkpoints, rundir
from rtda.train.config import (
    AMP_MODES,
    PRESETS,
    SOURCES,
    TARGETS,
    TrainConfig,
    resolve_config,
    summary,
)
from rtda.train.distributed import is_main_process, shutdown
from rtda.train.run import Trainer, TrainingDiverged
from rtda.train.step import METHODS, MODES

RESUME_FLAGS = {"iterations", "device", "workers", "skip_bad"}  # may change on --resume
NOT_CONFIG = {"preset", "config", "resume", "resume_intact", "overwrite", "quiet"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rtda.train",
        description="Train BiSeNet with adversarial output-space adaptation (the paper's "
                    "method), or the source-only / target-only baselines. Values: the preset, "
                    "then --config, then flags. The preset: --preset, else the config file's "
                    "'preset:', else 'paper' when a real dataset is named (flag or file), else "
                    "'toy' (the built-in toy pair, generated if missing).")
    add = p.add_argument
    add("--preset", choices=tuple(PRESETS), default=None,
        help="paper (the paper's values; the default with a real dataset), authors-code (the "
             "authors' code), toy (the default otherwise)")
    add("--config", default=None, metavar="FILE",
        help="YAML or TOML file of config values (any key below, e.g. source, out, preset)")
    add("--mode", choices=MODES, default=None, help="adapt (default), source-only, target-only")
    add("--method", choices=METHODS, default=None,
        help="what adapt does: adversarial (the paper: the discriminator and Eq. 2; default), "
             "self-training (an EMA teacher's confidence-weighted pseudo-labels on ClassMix "
             "batches, as DACS), or both")
    add("--ema-alpha", type=float, default=None, help="self-training: teacher momentum (0.99)")
    add("--pseudo-threshold", type=float, default=None,
        help="self-training: the confidence a pseudo-label's pixel must exceed to count toward "
             "the target loss's weight (0.968)")
    add("--class-mix", action=argparse.BooleanOptionalAction, default=None,
        help="self-training: paste half of each source image's classes onto its target image "
             "(default on)")
    add("--rare-class-sampling", action=argparse.BooleanOptionalAction, default=None,
        help="self-training: draw source images by rare class, as DAFormer (default on; the "
             "class counts are computed once per dataset and cached)")
    add("--rcs-temperature", type=float, default=None,
        help="rare-class sampling temperature (0.01; larger is closer to uniform)")
    add("--warmup", type=int, default=None,
        help="self-training: iterations before it starts (adversarial with --method both, "
             "else source only; default 0)")
    add("--fused", action=argparse.BooleanOptionalAction, default=None,
        help="fused discriminator layers, adversarial losses and self-training loss (rtda_kernels)")
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
    add("--resolution", default=None, metavar="WxH",
        help="training size, width x height, e.g. 1024x512")
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
    add("--skip-bad", action=argparse.BooleanOptionalAction, default=None,
        help="skip unreadable images (counted in the log) instead of stopping the run")
    add("--log-every", type=int, default=None)
    add("--val-every", type=int, default=None)
    add("--val-images", type=int, default=None, help="score only the first N val images")
    add("--checkpoint-every", type=int, default=None)
    add("--sync-bn", action=argparse.BooleanOptionalAction, default=None)
    add("--flip", action=argparse.BooleanOptionalAction, default=None,
        help="random horizontal flips")
    add("--out", default=None, help="run directory (default: runs/<preset>-<mode>-seed<seed>); "
                                    "refused if it holds a run, unless --overwrite")
    add("--overwrite", action="store_true",
        help="replace the run in --out (its checkpoints, config and logs are deleted)")
    add("--resume", default=None, metavar="DIR",
        help="continue the run in DIR from its newest checkpoint (its saved config is used)")
    add("--resume-intact", action="store_true",
        help="with --resume: skip corrupt checkpoints and continue from the newest intact one")
    add("--quiet", action="store_true", help="no progress bars")
    return add_version(p)


def _given(args: argparse.Namespace) -> dict:
    """The config values set on the command line."""
    return {k: v for k, v in vars(args).items() if k not in NOT_CONFIG and v is not None}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The configuration of a new run: preset, then --config, then flags."""
    return resolve_config(args.preset, args.config, _given(args))


def _resume(parser: argparse.ArgumentParser, args: argparse.Namespace):
    given = _given(args)
    conflicts = sorted(set(given) - RESUME_FLAGS)
    conflicts += [name for name in ("preset", "config", "overwrite") if getattr(args, name)]
    if conflicts:
        parser.error("--resume continues with the run's saved config; it cannot be combined "
                     "with " + ", ".join(f"--{c.replace('_', '-')}" for c in conflicts))
    corrupt: list[str] = []
    path = run_checkpoints.latest(args.resume, intact=args.resume_intact, skipped=corrupt)
    state = run_checkpoints.read(path)
    saved = dict(state["config"])
    preset = saved.pop("preset")
    # the learning-rate schedule keeps its horizon when --iterations changes
    saved["schedule_iterations"] = saved["schedule_iterations"] or saved["iterations"]
    config = resolve_config(preset, overrides={**saved, **given, "out": args.resume})
    return config, state, "\n".join([*corrupt, f"resuming {args.resume} from {path.name} "
                                                f"(iteration {state['iteration']})"])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume_intact and args.resume is None:
        parser.error("--resume-intact needs --resume DIR")
    lock = trainer = None
    try:
        if args.resume is not None:
            if is_main_process():
                lock = rundir.claim(args.resume, resume=True)
            config, resume_state, message = _resume(parser, args)
        else:
            config, resume_state, message = config_from_args(args), None, None
            if is_main_process():
                lock = rundir.claim(config.out, overwrite=args.overwrite)
        trainer = Trainer(config, resume=resume_state, progress=not args.quiet)
        if message:
            trainer.note(message)
        trainer.note(summary(config))
        result = trainer.train()
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (CheckpointError, DatasetError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if lock is not None:
            lock.release()
        if trainer is not None:
            shutdown(trainer.world)
    if trainer.world.is_main:
        miou = result["val_miou"]
        print(f"{result['reason']} at iteration {result['iteration']} of {config.iterations}"
              + (f", val mIoU {100 * miou:.2f}" if miou is not None else "")
              + (f", {len(result['skipped'])} unreadable images skipped (see "
                 f"{config.out}/train.log)" if result["skipped"] else "")
              + f"; checkpoints in {config.out}")
        if result["reason"] == "stopped":
            print(f"resume with: python -m rtda.train --resume {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
