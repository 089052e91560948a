"""``python -m rtda.train.discriminator_probe``: can each discriminator tell the domains apart?

With a segmenter frozen (a source-only checkpoint, eval mode), each discriminator is trained
alone, with Adam and the discriminator loss of Eq. (1), on the softmax maps of source and target
train images, and scored on maps of images it never saw: the fraction of map pixels on the right
side of 0 (source < 0 < target) and of images whose mean logit is. An adaptation whose
discriminator cannot do this gives the segmenter nothing to learn from.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import rtda_kernels
from rtda.checkpoint_io import CheckpointError, load_segmenter
from rtda.cli import add_version
from rtda.data import Cityscapes, DatasetError, SegmentationTransform, build_dataset, collate
from rtda.data.toy import ensure_toy
from rtda.models import DISCRIMINATORS, build_discriminator
from rtda.train.config import SOURCES, TARGETS


@dataclass
class ProbeResult:
    discriminator: str
    parameters: int
    steps: int
    train_loss: float  # mean over the last tenth of the steps
    held_out_loss: float
    pixel_accuracy: float
    image_accuracy: float


def softmax_maps(segmenter: torch.nn.Module, dataset, count: int, batch_size: int = 4,
                 device: str | torch.device = "cpu") -> torch.Tensor:
    """``softmax(segmenter(image))`` of the first ``count`` images of ``dataset``, N x C x H x W."""
    if len(dataset) < count:
        raise ValueError(f"the probe needs {count} images, but the dataset at {dataset.root} has "
                         f"{len(dataset)}; pass a smaller --images")
    maps = []
    with torch.no_grad():
        for start in range(0, count, batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, count))])
            maps.append(torch.softmax(segmenter(batch["image"].to(device)).float(), 1).cpu())
    return torch.cat(maps)


def probe(name: str, source: torch.Tensor, target: torch.Tensor, held_out: int, *, steps: int,
          lr: float, batch_size: int = 4, seed: int = 0) -> ProbeResult:
    """Train discriminator ``name`` on all but the last ``held_out`` maps of each domain and
    score it on those."""
    if not 0 < held_out < min(len(source), len(target)):
        raise ValueError(f"held_out must be between 1 and {min(len(source), len(target)) - 1}, "
                         f"got {held_out}")
    torch.manual_seed(seed)
    d = build_discriminator(name, source.shape[1], fused=True)
    optimizer = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.9, 0.99))
    train_s, train_t = source[:-held_out], target[:-held_out]
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        s = train_s[torch.randint(len(train_s), (batch_size,), generator=generator)]
        t = train_t[torch.randint(len(train_t), (batch_size,), generator=generator)]
        loss = rtda_kernels.discriminator_loss(d(s), d(t))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    d.eval()
    with torch.no_grad():
        out_s, out_t = d(source[-held_out:]), d(target[-held_out:])
        held_loss = rtda_kernels.discriminator_loss(out_s, out_t).item()
        pixels = torch.cat([(out_s < 0).flatten(), (out_t > 0).flatten()]).float().mean()
        images = torch.cat([out_s.mean((1, 2, 3)) < 0, out_t.mean((1, 2, 3)) > 0]).float().mean()
    tail = losses[-max(1, steps // 10):]
    return ProbeResult(name, sum(p.numel() for p in d.parameters()), steps,
                       sum(tail) / len(tail), held_loss, pixels.item(), images.item())


def _datasets(args: argparse.Namespace, resolution: tuple[int, int]):
    transform = SegmentationTransform(size=resolution, flip=False)
    source_root, target_root = args.source_root, args.target_root
    if (args.source == "toy" and source_root is None) or (args.target == "toy"
                                                           and target_root is None):
        toy = ensure_toy(None, progress=not args.quiet)
        source_root = source_root or str(toy.source)
        target_root = target_root or str(toy.target)
    if source_root is None or target_root is None:
        raise ValueError("--source-root and --target-root are required for a real dataset")
    source = build_dataset("gta5" if args.source == "toy" else args.source, source_root,
                           transform=transform)
    target = Cityscapes(target_root, "train", labels=False, transform=transform)
    return source, target


def format_table(results: Sequence[ProbeResult]) -> str:
    lines = ["| discriminator | params | steps | train loss | held-out loss | pixel accuracy "
             "| image accuracy |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.discriminator} | {r.parameters:,} | {r.steps} | {r.train_loss:.3f} "
                     f"| {r.held_out_loss:.3f} | {100 * r.pixel_accuracy:.1f} % "
                     f"| {100 * r.image_accuracy:.1f} % |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rtda.train.discriminator_probe",
                                     description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="the frozen segmenter: a source-only run's last.pt")
    parser.add_argument("--source", choices=SOURCES, default="toy")
    parser.add_argument("--target", choices=TARGETS, default="toy")
    parser.add_argument("--source-root", default=None)
    parser.add_argument("--target-root", default=None)
    parser.add_argument("--discriminators", nargs="+", choices=DISCRIMINATORS,
                        default=list(DISCRIMINATORS))
    parser.add_argument("--images", type=int, default=120, help="images per domain (default 120)")
    parser.add_argument("--held-out", type=int, default=40,
                        help="of those, scored and never trained on (default 40)")
    parser.add_argument("--steps", type=int, default=150, help="Adam steps (default 150)")
    parser.add_argument("--d-lr", type=float, default=1e-4,
                        help="Adam learning rate (default 1e-4, the toy preset's)")
    parser.add_argument("--batch-size", type=int, default=4, help="maps per domain per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results")
    parser.add_argument("--quiet", action="store_true")
    return add_version(parser)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("images", "steps", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if not 0 < args.held_out < args.images:
        parser.error(f"--held-out must be between 1 and --images - 1 ({args.images - 1})")
    try:
        segmenter, config = load_segmenter(args.checkpoint)
        resolution = tuple(config.get("resolution") or (128, 256))
        source, target = _datasets(args, resolution)
        maps_s = softmax_maps(segmenter, source, args.images)
        maps_t = softmax_maps(segmenter, target, args.images)
        results = []
        for name in args.discriminators:
            results.append(probe(name, maps_s, maps_t, args.held_out, steps=args.steps,
                                 lr=args.d_lr, batch_size=args.batch_size, seed=args.seed))
            if not args.quiet:
                print(f"{name}: held-out pixel accuracy {100 * results[-1].pixel_accuracy:.1f} %",
                      file=sys.stderr, flush=True)
    except (CheckpointError, DatasetError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Discriminators trained alone on the softmax maps of {args.checkpoint} "
          f"({args.images - args.held_out} train, {args.held_out} held-out images per domain, "
          f"{args.steps} Adam steps at lr {args.d_lr:g}):\n\n{format_table(results)}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
