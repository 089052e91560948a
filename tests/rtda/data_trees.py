"""Tiny dataset trees in the GTA5, SYNTHIA and Cityscapes layouts, a small toy pair and an
untrained checkpoint, for the tests of rtda.

SYNTHIA's 16-bit multi-channel label PNGs are written by a minimal PNG encoder of our own (not by
OpenCV, which the loader reads them with), so the test cannot agree with the loader by sharing its
channel-order mistake.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def write_png16(path: Path, array: np.ndarray) -> None:
    """Writes an HxWxC (C = 3: RGB, 4: RGBA) uint16 array as a 16-bit PNG, channels in order."""
    height, width, channels = array.shape
    color_type = {3: 2, 4: 6}[channels]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def random_rgb(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode == "P":
        image = Image.frombytes("P", image.size, array.tobytes())
        image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(path)
    return path


def make_gta5(root: Path, count: int = 3, size: tuple[int, int] = (20, 30),
              seed: int = 0) -> list[np.ndarray]:
    """``count`` random images with palette labels of random ids 0..40 (34..40 are unknown)."""
    rng = np.random.default_rng(seed)
    labels = []
    for i in range(count):
        save(root / "images" / f"{i:05d}.png", random_rgb(rng, *size))
        label = rng.integers(0, 41, size=size, dtype=np.uint8)
        save(root / "labels" / f"{i:05d}.png", label, mode="P")
        labels.append(label)
    return labels


def make_synthia(root: Path, count: int = 3, size: tuple[int, int] = (20, 30),
                 seed: int = 0, channels: int = 3) -> list[np.ndarray]:
    """Random images with 16-bit labels: class ids 0..25 in red, instance-like junk elsewhere."""
    rng = np.random.default_rng(seed)
    labels = []
    for i in range(count):
        save(root / "RGB" / f"{i:07d}.png", random_rgb(rng, *size))
        ids = rng.integers(0, 26, size=size).astype(np.uint16)
        junk = rng.integers(0, 65536, size=(*size, channels - 1)).astype(np.uint16)
        write_png16(root / "GT" / "LABELS" / f"{i:07d}.png", np.dstack([ids, junk]))
        labels.append(ids)
    return labels


def cityscapes_names(split: str, count: int) -> list[tuple[str, str]]:
    cities = ("aachen", "bremen") if split == "train" else ("frankfurt", "lindau")
    return [(cities[i % 2], f"{cities[i % 2]}_{i:06d}_000019") for i in range(count)]


def make_cityscapes(root: Path, split: str = "val", count: int = 3,
                    size: tuple[int, int] = (20, 30), seed: int = 0,
                    labels: bool = True) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for city, stem in cityscapes_names(split, count):
        save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
             random_rgb(rng, *size))
        label = rng.integers(0, 34, size=size, dtype=np.uint8)
        if labels:
            save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label)
        out.append(label)
    return out


def small_toy(folder: Path, images: int, val: int):
    """A toy pair of ``images`` source and target train images and ``val`` val images, 64x128."""
    from rtda.data.toy import ToyConfig, generate_toy

    return generate_toy(folder / "pair", ToyConfig(num_source=images, num_target=images,
                                                   num_val=val, height=64, width=128),
                        workers=1, progress=False)


def untrained_checkpoint(path: Path, resolution: list[int]) -> Path:
    """A checkpoint of a freshly initialised BiSeNet-R18 (seed 0) trained at ``resolution``."""
    import torch

    from rtda.checkpoint_io import save_atomic
    from rtda.models import build_segmenter

    torch.manual_seed(0)
    save_atomic({"model": build_segmenter("resnet18").state_dict(),
                 "config": {"backbone": "resnet18", "resolution": resolution}}, path)
    return path
