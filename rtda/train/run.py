"""The training run: data streams, models, optimisers, the loop, logging, validation, checkpoints.

:class:`Trainer` is built from a :class:`TrainConfig` (or from a run directory to resume) and
``train()`` runs to ``config.iterations``. Every ``log_every`` iterations a row goes to
``metrics.jsonl`` and ``metrics.csv`` (and to TensorBoard when it is installed) and a line to
``train.log``, which also keeps every message of the run; every ``val_every`` the target val
split is scored; every ``checkpoint_every`` a checkpoint is written. A checkpoint of a state that
is already on disk (``best.pt`` at the last iteration) is a hard link, not a second copy.
SIGINT and SIGTERM finish the current iteration, write ``last.pt`` and return. A loss that is NaN
or infinite stops the run with :class:`TrainingDiverged`, naming the iteration and the loss; the
checkpoints already written are the last good ones.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtda.data import Cityscapes, SegmentationTransform, build_dataset
from rtda.data.toy import ensure_toy
from rtda.devices import resolve_device
from rtda.evaluate import evaluate
from rtda.models import build_discriminator, build_segmenter
from rtda.models.discriminators import WIDTHS
from rtda.train import run_checkpoints
from rtda.train.config import TrainConfig, save_config
from rtda.train.distributed import (
    any_flag,
    barrier,
    init_world,
    mean_over_ranks,
    unwrap,
    wrap,
)
from rtda.train.self_training import EmaTeacher, rare_class_source_weights
from rtda.train.step import StepSettings, train_step
from rtda.train.streams import DataStream

LOSSES = ("seg", "adv", "d", "st", "pseudo_weight")


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


def poly(horizon: int, power: float):
    """The poly learning-rate factor of iteration ``i``: ``(1 - i / horizon) ** power``."""
    return lambda i: max(0.0, 1 - i / horizon) ** power


class Trainer:
    def __init__(self, config: TrainConfig, *, resume: dict[str, Any] | None = None,
                 progress: bool = True) -> None:
        self.config, self.progress = config, progress
        self._notes: list[str] = []
        self._log_file = None
        self.skipped: list[tuple[str, str]] = []
        self._on_disk: tuple[int, str] | None = None  # (iteration, file) of the newest save
        self.device = resolve_device(config.device)
        self.world = init_world(self.device.type)
        if config.batch_size % self.world.size:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                             f"{self.world.size} processes")
        if self.world.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)
            torch.cuda.set_device(self.device)
        self.out = Path(config.out)
        torch.manual_seed(config.seed)
        self._build_data(resume)
        self._build_models()
        self.iteration, self.best_miou = 0, -math.inf
        if resume is not None:
            self._restore(resume)
        self._stop = False

    # -- set-up ----------------------------------------------------------------------------------
    def _roots(self) -> tuple[str | None, str | None]:
        c = self.config
        source_root, target_root = c.source_root, c.target_root
        if c.mode != "target-only" and c.source != "toy" and source_root is None:
            raise ValueError(f"--source-root is required for --source {c.source}")
        if c.target != "toy" and target_root is None:
            raise ValueError(f"--target-root is required for --target {c.target}")
        needs_toy = (c.source == "toy" and source_root is None) or (
            c.target == "toy" and target_root is None)
        if needs_toy:  # the built-in pair, generated on first use (rank 0 first, then the rest)
            if self.world.is_main:
                ensure_toy(None, progress=self.progress)
            barrier(self.world)
            toy = ensure_toy(None, progress=False)
            if c.source == "toy" and source_root is None:
                source_root = str(toy.source)
            if c.target == "toy" and target_root is None:
                target_root = str(toy.target)
        return source_root, target_root

    def _build_data(self, resume: dict[str, Any] | None) -> None:
        c = self.config
        source_root, target_root = self._roots()
        transform = SegmentationTransform(size=c.resolution, flip=c.flip)
        consumed = (resume or {}).get("data", {})
        if c.mode == "target-only":  # the oracle: labelled target images in place of the source
            source = Cityscapes(target_root, "train", transform=transform, list_file=c.target_list,
                                skip_bad=c.skip_bad)
        else:
            source_name = "gta5" if c.source == "toy" else c.source
            source = build_dataset(source_name, source_root, transform=transform,
                                   list_file=c.source_list, skip_bad=c.skip_bad)
        self.source = DataStream(source, c.batch_size, self.world, c.seed, c.workers,
                                  consumed.get("source", 0), self._skip, self._rcs(source))
        self.target = None
        if c.mode == "adapt":
            target = Cityscapes(target_root, "train", labels=False, transform=transform,
                                list_file=c.target_list, skip_bad=c.skip_bad)
            self.target = DataStream(target, c.batch_size, self.world, c.seed + 1, c.workers,
                                      consumed.get("target", 0), self._skip)
        for dataset in (source, *([target] if c.mode == "adapt" else [])):
            for path, reason in dataset.skipped:  # found while listing the files
                self._skip(path, reason)
        self.val = None
        if (Path(target_root) / "gtFine" / "val").is_dir():
            self.val = Cityscapes(target_root, "val", transform=SegmentationTransform(
                size=c.resolution, resize_label=False))
            if c.val_images is not None:
                self.val.samples = self.val.samples[: c.val_images]

    def _rcs(self, source) -> np.ndarray | None:
        c = self.config
        if not (c.mode == "adapt" and c.method != "adversarial" and c.rare_class_sampling):
            return None
        return rare_class_source_weights(source, c.rcs_temperature, self.world, self.progress)

    def _build_models(self) -> None:
        c = self.config
        segmenter = build_segmenter(c.backbone, 19, c.pretrained).to(self.device)
        self.segmenter = wrap(segmenter, self.world, self.device, c.sync_bn,
                              find_unused_parameters=c.mode == "adapt")
        self.seg_optimizer = torch.optim.SGD(segmenter.parameters(), lr=c.seg_lr,
                                             momentum=c.momentum, weight_decay=c.weight_decay)
        self.seg_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.seg_optimizer, poly(c.horizon, c.poly_power))
        self.discriminator = self.d_optimizer = self.d_scheduler = self.teacher = None
        adversarial = c.mode == "adapt" and c.method in ("adversarial", "both")
        if c.mode == "adapt" and c.method in ("self-training", "both"):
            self.teacher = EmaTeacher(segmenter, c.ema_alpha)
        if adversarial:
            discriminator = build_discriminator(c.discriminator, 19, fused=c.fused)
            self.discriminator = wrap(discriminator.to(self.device), self.world, self.device)
            self.d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=c.d_lr,
                                                betas=c.d_betas)
            self.d_scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.d_optimizer, poly(c.horizon, c.poly_power))
        self.scaler = torch.amp.GradScaler(self.device.type) if c.amp == "fp16" else None
        self.settings = StepSettings(
            mode=c.mode, lambda_adv=c.lambda_adv, source_label=c.source_label,
            target_label=c.target_label, fused=c.fused, amp=c.amp,
            upsample_map=2 ** len(WIDTHS[c.discriminator]) == 32, adversarial=adversarial,
            self_training=self.teacher is not None, class_mix=c.class_mix,
            pseudo_threshold=c.pseudo_threshold)

    def _settings(self) -> StepSettings:
        """This iteration's settings: no self-training during the warm-up."""
        if self.settings.self_training and self.iteration < self.config.warmup:
            return dataclasses.replace(self.settings, self_training=False)
        return self.settings

    # -- checkpoints -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        optional = {"discriminator": self.discriminator, "d_optimizer": self.d_optimizer,
                    "d_scheduler": self.d_scheduler, "scaler": self.scaler,
                    "teacher": self.teacher}
        state = {"model": unwrap(self.segmenter).state_dict(),
                 "seg_optimizer": self.seg_optimizer.state_dict(),
                 "seg_scheduler": self.seg_scheduler.state_dict(),
                 "iteration": self.iteration, "best_miou": self.best_miou,
                 "rng": run_checkpoints.rng_state(), "config": self.config.as_dict(),
                 "data": {"source": self.source.consumed,
                          "target": self.target.consumed if self.target else 0}}
        for name, obj in optional.items():
            if obj is not None:
                state[name] = unwrap(obj).state_dict() if name == "discriminator" else (
                    obj.state_dict())
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        unwrap(self.segmenter).load_state_dict(state["model"])
        self.seg_optimizer.load_state_dict(state["seg_optimizer"])
        self.seg_scheduler.load_state_dict(state["seg_scheduler"])
        if self.discriminator is not None:
            unwrap(self.discriminator).load_state_dict(state["discriminator"])
            self.d_optimizer.load_state_dict(state["d_optimizer"])
            self.d_scheduler.load_state_dict(state["d_scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        self.iteration, self.best_miou = int(state["iteration"]), float(state["best_miou"])
        run_checkpoints.set_rng_state(state["rng"])

    def save(self, name: str) -> Path | None:
        if not self.world.is_main:
            return None
        if self._on_disk is not None and self._on_disk[0] == self.iteration and (
                (self.out / self._on_disk[1]).is_file()):
            path = run_checkpoints.link(self.out, self._on_disk[1], name)  # the same state
        else:
            path = run_checkpoints.write(self.state(), self.out, name)
        self._on_disk = (self.iteration, name)
        return path

    # -- logging ---------------------------------------------------------------------------------
    def note(self, text: str, *, echo: bool = True) -> None:
        """A message for the user: printed (rank 0, with ``echo``) and kept in ``train.log``."""
        if not self.world.is_main:
            return
        if echo:
            print(text, file=sys.stderr, flush=True)
        if self._log_file is None:
            self._notes.append(text)
        else:
            self._log_file.write(text + "\n")
            self._log_file.flush()

    def _skip(self, path, reason: str) -> None:
        self.skipped.append((str(path), reason))
        self.note(f"skipped {path}: {reason} ({len(self.skipped)} skipped so far)")

    def _open_logs(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        stale = run_checkpoints.clean_stale(self.out)
        save_config(self.config, self.out / "config.yaml")
        self._trim_logs()
        self._csv_new = not (self.out / "metrics.csv").exists()
        self._log_file = (self.out / "train.log").open("a")
        self._log_file.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid "
                             f"{os.getpid()}: {self.config.mode} from iteration "
                             f"{self.iteration} to {self.config.iterations}\n")
        for text in self._notes:
            self._log_file.write(text + "\n")
        self._notes.clear()
        if stale:
            self.note(f"removed {len(stale)} stale temporary file(s) of an interrupted write: "
                      + ", ".join(p.name for p in stale))
        self._writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.note("TensorBoard is not installed: metrics go to metrics.jsonl and metrics.csv "
                      "(pip install tensorboard for its logs)")
        else:
            self._writer = SummaryWriter(str(self.out / "tensorboard"))

    def _trim_logs(self) -> None:
        """Drops log rows past the resumed iteration (written after the last checkpoint)."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        kept = [r for r in rows if r["iteration"] <= self.iteration]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        csv_path = self.out / "metrics.csv"
        if csv_path.exists():
            with csv_path.open() as file:
                lines = list(csv.DictReader(file))
            fields = list(lines[0]) if lines else []
            with csv_path.open("w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=fields)
                if fields:
                    writer.writeheader()
                writer.writerows(r for r in lines if int(r["iteration"]) <= self.iteration)

    def _log(self, row: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        with (self.out / "metrics.jsonl").open("a") as file:
            file.write(json.dumps(row) + "\n")
        fields = ["iteration", "kind", *LOSSES, "seg_lr", "d_lr", "miou", "seconds"]
        with (self.out / "metrics.csv").open("a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fields, extrasaction="ignore")
            if self._csv_new:
                writer.writeheader()
                self._csv_new = False
            writer.writerow(row)
        self._log_file.write(" ".join(
            f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()) + "\n")
        self._log_file.flush()
        if self._writer is not None:
            for key, value in row.items():
                if isinstance(value, float):
                    self._writer.add_scalar(f"{row['kind']}/{key}", value, row["iteration"])

    # -- the loop --------------------------------------------------------------------------------
    def validate(self) -> float | None:
        if self.val is None:
            return None
        model = unwrap(self.segmenter)
        result = evaluate(model, self.val, batch_size=max(1, self.config.batch_size),
                          workers=0, device=self.device, progress=False, name="val")
        model.train()
        return result.scores(19).miou

    def _request_stop(self, signum, frame) -> None:
        self._stop = True

    def train(self) -> dict[str, Any]:
        """Runs to ``config.iterations``; returns the last losses, val mIoU and why it ended."""
        from tqdm import tqdm

        c = self.config
        if self.world.is_main:
            self._open_logs()
        handlers = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT,
                                                                      signal.SIGTERM)}
        bar = tqdm(total=c.iterations, initial=self.iteration, desc=f"train {c.mode}",
                   unit="it", disable=not (self.progress and self.world.is_main))
        losses: dict[str, float] = {}
        miou, reason, start = None, "finished", time.perf_counter()
        try:
            while self.iteration < c.iterations:
                source = self.source.next(self.device)
                target = self.target.next(self.device) if self.target is not None else None
                generator = torch.Generator().manual_seed(c.seed * 1_000_003 + self.iteration)
                losses = train_step(self.segmenter, self.discriminator, self.seg_optimizer,
                                    self.d_optimizer, source, target, self._settings(),
                                    self.scaler, self.teacher, generator)
                if self.teacher is not None:
                    self.teacher.update(unwrap(self.segmenter), self.iteration, self.world)
                losses = mean_over_ranks(losses, self.world)
                bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
                if any_flag(bool(bad), self.world):
                    named = ", ".join(f"{k} = {v}" for k, v in bad.items()) or "on another rank"
                    raise TrainingDiverged(
                        f"iteration {self.iteration + 1}: loss {named} is not finite; stopped "
                        f"(the checkpoints in {self.out} hold the last good state)")
                for scheduler in (self.seg_scheduler, self.d_scheduler):
                    if scheduler is not None:
                        scheduler.step()
                self.iteration += 1
                lrs = {"seg_lr": self.seg_optimizer.param_groups[0]["lr"]}
                if self.d_optimizer is not None:
                    lrs["d_lr"] = self.d_optimizer.param_groups[0]["lr"]
                bar.set_postfix({**{k: f"{v:.3f}" for k, v in losses.items()},
                                 "lr": f"{lrs['seg_lr']:.2e}"}, refresh=False)
                bar.update()
                if self.iteration % c.log_every == 0 or self.iteration == c.iterations:
                    self._log({"iteration": self.iteration, "kind": "train", **losses, **lrs,
                               "seconds": round(time.perf_counter() - start, 3),
                               **({"skipped": len(self.skipped)} if self.skipped else {})})
                if self.iteration % c.val_every == 0 or self.iteration == c.iterations:
                    miou = self._validate_and_keep_best()
                if self.iteration % c.checkpoint_every == 0:
                    self.save(f"iter_{self.iteration:06d}.pt")
                if any_flag(self._stop, self.world):
                    reason = "stopped"
                    break
            self.save("last.pt")
            barrier(self.world)
            self.note(f"{reason} at iteration {self.iteration} of {c.iterations}"
                      + (f", val mIoU {100 * miou:.2f}" if miou is not None else "")
                      + (f", {len(self.skipped)} unreadable images skipped" if self.skipped
                         else ""), echo=False)
        except Exception as err:
            self.note(f"error: {err}", echo=False)
            raise
        finally:
            bar.close()
            for s, handler in handlers.items():
                signal.signal(s, handler)
            if getattr(self, "_writer", None) is not None:
                self._writer.close()
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
        return {"iteration": self.iteration, "losses": losses, "val_miou": miou,
                "best_miou": None if self.best_miou == -math.inf else self.best_miou,
                "reason": reason, "skipped": list(self.skipped)}

    def _validate_and_keep_best(self) -> float | None:
        miou = self.validate() if self.world.is_main else None
        if miou is None:
            return None
        self._log({"iteration": self.iteration, "kind": "val", "miou": miou})
        if miou > self.best_miou:
            self.best_miou = miou
            self.save("best.pt")
        return miou
