"""Is data loading a bottleneck? The input pipeline's cost per batch next to a training step's.

    python -m bench.data_loading            # batch 4, 2 worker processes
    python -m bench.data_loading --batches 6 --workers 2

Two cases, each in the GTA5 layout read by the real loader with the paper's transform:
``gta5-size``, toy scenes drawn at GTA5's 1914x1052 and resized to 1024x512, and ``toy``, the
built-in pair's 512x256 images at their size. For each: the CPU time of one batch in the main
process (``workers=0``), the throughput of a DataLoader with ``--workers`` processes, and the time
of one BiSeNet-R18 forward+backward on such a batch, which is less than a UDA step (that also runs
the target batch and the discriminator). On this machine the workers share the same cores with
training, so the fraction that matters is load time / step time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rtda.timing import time_interleaved, timing_allocator
from rtda.data import GTA5, SegmentationTransform, collate
from rtda.data.labels import LABEL_ID_PALETTE
from rtda.data.toy_scenes import SOURCE, draw_scene
from rtda.machine import cpu_description
from rtda.models import build_segmenter

CASES = {"gta5-size": ((1052, 1914), (512, 1024)), "toy": ((256, 512), (256, 512))}


def _write_tree(root: Path, image_size: tuple[int, int], count: int) -> None:
    for i in range(count):
        rgb, ids = draw_scene(np.random.default_rng(i), image_size, SOURCE)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(root / "images" / f"{i:05d}.png")
        label = Image.frombytes("P", (image_size[1], image_size[0]), ids.tobytes())
        label.putpalette(LABEL_ID_PALETTE)
        label.save(root / "labels" / f"{i:05d}.png")


def _loader_seconds_per_batch(dataset, batch_size: int, workers: int, batches: int) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=collate, shuffle=True, drop_last=True,
                                         persistent_workers=workers > 0)
    iterator = iter(loader)
    next(iterator)  # start-up (worker processes, first batch) is not the steady state
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return (time.perf_counter() - start) / batches


def _step_seconds(model, batch: dict, repeats: int = 3) -> float:
    def step() -> None:
        outputs = model(batch["image"])
        sum(F.cross_entropy(o, batch["label"], ignore_index=255) for o in outputs).backward()
    return time_interleaved({"step": step}, repeats, torch.device("cpu"))["step"] / 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.data_loading", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=6, help="timed batches per measurement")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--step-repeats", type=int, default=3,
                        help="timed forward+backward steps (median)")
    args = parser.parse_args(argv)
    allocator = timing_allocator()
    model = build_segmenter("resnet18").train()
    print("| case | image -> input | load, main process (ms/batch) | load, "
          f"{args.workers} workers (ms/batch) | R18 fwd+bwd (ms/batch) | load / step |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (image_size, input_size) in CASES.items():
            root = Path(tmp) / name
            _write_tree(root, image_size, args.batch_size * (args.batches + 2))
            dataset = GTA5(root, transform=SegmentationTransform(size=input_size, flip=True))
            serial = _loader_seconds_per_batch(dataset, args.batch_size, 0, args.batches)
            parallel = _loader_seconds_per_batch(dataset, args.batch_size, args.workers,
                                                 args.batches)
            batch = collate([dataset[(i, i)] for i in range(args.batch_size)])
            step = _step_seconds(model, batch, args.step_repeats)
            print(f"| {name} | {image_size[1]}x{image_size[0]} -> {input_size[1]}x{input_size[0]} "
                  f"| {1e3 * serial:.1f} | {1e3 * parallel:.1f} | {1e3 * step:.0f} "
                  f"| {serial / step:.3f} |")
    print(f"\nbatch {args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, {cpu_description()}, {allocator}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
