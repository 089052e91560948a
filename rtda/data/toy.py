"""The built-in toy domain pair: a synthetic "game" source and a "camera" target, on disk.

``python -m rtda.data.toy --out DIR`` (or :func:`generate_toy`) writes, deterministically from a
seed, ``DIR/source`` in the GTA5 layout (``images/NNNNN.png``, palette ``labels/NNNNN.png`` with
Cityscapes label ids) and ``DIR/target`` in the Cityscapes layout (``leftImg8bit/{train,val}`` and
``gtFine/{train,val}`` ``*_labelIds.png``), so the real loaders read it. The scenes and the two
looks are in :mod:`rtda.data.toy_scenes`. :func:`ensure_toy` is what training and evaluation call
when no dataset root is given: it reuses a complete pair with the same parameters or generates one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from rtda.cli import add_version
from rtda.data.images import DatasetError
from rtda.data.labels import LABEL_ID_PALETTE
from rtda.data.toy_scenes import STYLES, draw_scene

#: Bumped whenever the generator's output changes, so an old pair on disk is regenerated.
GENERATOR_VERSION = 1
MANIFEST = "toy.json"
CITIES = {"train": ("toyburg", "pixelton"), "val": ("valmont",)}


@dataclass(frozen=True)
class ToyConfig:
    seed: int = 0
    num_source: int = 300
    num_target: int = 300
    num_val: int = 100
    height: int = 256
    width: int = 512
    version: int = GENERATOR_VERSION

    def __post_init__(self) -> None:
        for name in ("num_source", "num_target", "num_val", "height", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ToyPaths:
    """Where a generated pair lies: ``source`` is a GTA5 root, ``target`` a Cityscapes root."""

    root: Path
    source: Path
    target: Path


def default_root() -> Path:
    """``$RTDA_TOY_ROOT``, else ``$XDG_CACHE_HOME/rtda/toy`` (``~/.cache/rtda/toy``)."""
    if os.environ.get("RTDA_TOY_ROOT"):
        return Path(os.environ["RTDA_TOY_ROOT"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "rtda" / "toy"


def _jobs(config: ToyConfig) -> list[tuple[str, str, int, str]]:
    """(style, split, index, relative stem) for every image, in a fixed order."""
    jobs = [("source", "train", i, f"{i:05d}") for i in range(config.num_source)]
    for split, count in (("train", config.num_target), ("val", config.num_val)):
        cities = CITIES[split]
        for i in range(count):
            city = cities[i % len(cities)]
            jobs.append(("target", split, i, f"{city}/{city}_{i // len(cities):06d}_000019"))
    return jobs


def _render(args: tuple[ToyConfig, Path, str, str, int, str]) -> None:
    config, root, style, split, index, stem = args
    # one generator per image, keyed by everything that names it: the output does not depend on
    # how the work is split over processes
    key = (config.seed, ("source", "target").index(style), ("train", "val").index(split), index)
    rgb, label_ids = draw_scene(np.random.default_rng(key), (config.height, config.width),
                                STYLES[style])
    if style == "source":  # GTA5 layout: palette PNG labels, palette index = label id
        image_path = root / "source" / "images" / f"{stem}.png"
        label_path = root / "source" / "labels" / f"{stem}.png"
        label = Image.frombytes("P", (config.width, config.height), label_ids.tobytes())
        label.putpalette(LABEL_ID_PALETTE)
    else:  # Cityscapes layout: greyscale *_labelIds.png
        image_path = root / "target" / "leftImg8bit" / split / f"{stem}_leftImg8bit.png"
        label_path = root / "target" / "gtFine" / split / f"{stem}_gtFine_labelIds.png"
        label = Image.fromarray(label_ids)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(image_path, compress_level=1)
    label.save(label_path, compress_level=1)


def _manifest(config: ToyConfig) -> dict:
    return {"generator": "rtda.data.toy", **asdict(config)}


def find_toy(root: str | os.PathLike, config: ToyConfig) -> ToyPaths | None:
    """The pair at ``root`` if it is complete and was generated with ``config``, else None."""
    root = Path(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest != _manifest(config):
        return None
    return ToyPaths(root, root / "source", root / "target")


def generate_toy(out: str | os.PathLike, config: ToyConfig = ToyConfig(), *,
                 workers: int | None = None, progress: bool = True) -> ToyPaths:
    """Writes the pair to ``out`` (replacing what is there) and returns its paths.

    The images are written into a temporary sibling folder that is renamed into place at the end,
    so an interrupted run never leaves a half-written pair that looks complete.
    ``workers`` processes draw the images (default: all cores); the output is the same for any
    number of them.
    """
    from tqdm import tqdm

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    jobs = [(config, staging, *job) for job in _jobs(config)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    bar = tqdm(total=len(jobs), desc="toy pair", unit="img", disable=not progress)
    try:
        if workers <= 1:
            for job in jobs:
                _render(job)
                bar.update()
        else:  # spawn: the caller may hold threads (torch) that fork would copy half-alive
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                for _ in pool.map(_render, jobs, chunksize=8):
                    bar.update()
        (staging / MANIFEST).write_text(json.dumps(_manifest(config), indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        bar.close()
        shutil.rmtree(staging, ignore_errors=True)
    return ToyPaths(out, out / "source", out / "target")


def ensure_toy(root: str | os.PathLike | None = None, config: ToyConfig = ToyConfig(), *,
               progress: bool = True) -> ToyPaths:
    """The toy pair at ``root`` (default: :func:`default_root`), generated first if it is missing,
    incomplete or was made with other parameters."""
    root = Path(root) if root is not None else default_root()
    found = find_toy(root, config)
    if found is not None:
        return found
    if root.exists() and any(root.iterdir()) and not (root / MANIFEST).is_file():
        raise DatasetError(f"{root} exists and is not a toy dataset (no {MANIFEST}): "
                           f"refusing to overwrite it")
    return generate_toy(root, config, progress=progress)


def write_preview(paths: ToyPaths, out: str | os.PathLike, rows: int = 4,
                  width: int = 256) -> Path:
    """A PNG grid of ``rows`` pairs: source image | source label | target image | target label
    (labels in the Cityscapes palette), each cell ``width`` pixels wide."""
    from rtda.data.images import read_label_ids, read_rgb
    from rtda.data.labels import CITYSCAPES_ID_TO_TRAIN_ID, colorize

    sources = sorted((paths.source / "images").glob("*.png"))[:rows]
    targets = sorted((paths.target / "leftImg8bit" / "train").glob("*/*.png"))[:rows]
    lines = []
    for source, target in zip(sources, targets):
        source_label = paths.source / "labels" / source.name
        target_label = (paths.target / "gtFine" / "train" / target.parent.name
                        / target.name.replace("_leftImg8bit", "_gtFine_labelIds"))
        cells = [np.asarray(read_rgb(source)),
                 colorize(CITYSCAPES_ID_TO_TRAIN_ID[read_label_ids(source_label)]),
                 np.asarray(read_rgb(target)),
                 colorize(CITYSCAPES_ID_TO_TRAIN_ID[read_label_ids(target_label)])]
        height = round(width * cells[0].shape[0] / cells[0].shape[1])
        lines.append(np.concatenate([np.asarray(Image.fromarray(c).resize((width, height)))
                                     for c in cells], axis=1))
    out = Path(out)
    Image.fromarray(np.concatenate(lines, axis=0)).save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rtda.data.toy",
        description="Generate the built-in toy domain pair: a synthetic source in the GTA5 layout "
                    "(OUT/source) and a real-looking target in the Cityscapes layout "
                    "(OUT/target, train and val splits with labels). Deterministic in --seed.")
    defaults = ToyConfig()
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default: {default_root()}, or $RTDA_TOY_ROOT)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--num-source", type=int, default=defaults.num_source,
                        help="source (GTA5-layout) images")
    parser.add_argument("--num-target", type=int, default=defaults.num_target,
                        help="target train images")
    parser.add_argument("--num-val", type=int, default=defaults.num_val,
                        help="target val images")
    parser.add_argument("--size", default=f"{defaults.width}x{defaults.height}",
                        help="image size WIDTHxHEIGHT (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes (default: one per core)")
    parser.add_argument("--force", action="store_true",
                        help="regenerate even if OUT already holds this pair")
    parser.add_argument("--preview", type=Path, default=None, metavar="PNG",
                        help="also write a grid of source and target images with their labels")
    args = add_version(parser).parse_args(argv)
    from rtda.data.transforms import parse_size

    try:
        height, width = parse_size(args.size)
        config = ToyConfig(args.seed, args.num_source, args.num_target, args.num_val, height,
                           width)
    except ValueError as err:
        parser.error(str(err))
    out = args.out if args.out is not None else default_root()
    start = time.perf_counter()
    paths = None if args.force else find_toy(out, config)
    if paths is not None:
        print(f"{out} already holds this toy pair (use --force to regenerate)")
    else:
        paths = generate_toy(out, config, workers=args.workers)
        total = config.num_source + config.num_target + config.num_val
        print(f"wrote {total} images in {time.perf_counter() - start:.1f} s: source (GTA5 "
              f"layout) {paths.source}, target (Cityscapes layout) {paths.target}")
    if args.preview is not None:
        print(f"preview: {write_preview(paths, args.preview)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
