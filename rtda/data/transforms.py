"""Joint image/label transforms: resize, random scale, random crop, horizontal flip, normalise.

The paper resizes every image to 1024x512 (width x height), bicubic for images and nearest for
labels, and augments nothing else; scale, crop and flip are options. Images are normalised with the
ImageNet mean and standard deviation in RGB order, which is what a torchvision-pretrained backbone
expects. (The authors' code subtracts a Caffe-style BGR mean from the input of a torchvision
backbone, a mismatch this project does not copy.)

Geometric steps run on Pillow images (fast, SIMD resampling); the label map is an 8-bit train-id
image by then, so nearest resampling keeps its ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from rtda.data.labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The paper's training and evaluation resolution, as (height, width).
PAPER_SIZE = (512, 1024)


def parse_size(text: str, multiple: int = 1) -> tuple[int, int]:
    """"1024x512" (width x height, as the paper writes it) -> (height, width) = (512, 1024);
    errors echo ``text`` as it was typed."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size must be WIDTHxHEIGHT such as 1024x512, got {text!r}") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    if width % multiple or height % multiple:
        raise ValueError(f"size must be WIDTHxHEIGHT with both multiples of {multiple}, got "
                         f"{text!r}")
    return height, width


@dataclass(frozen=True)
class SegmentationTransform:
    """Turns a (Pillow RGB image, HxW uint8 train-id label) pair into tensors.

    size: (height, width) every image is resized to first, or None to keep it.
    scale: (low, high) range of a random rescale after that, or None.
    crop: (height, width) of a random crop (padded with ignore where the image is smaller), or None.
    flip: random horizontal flip with probability 0.5.
    resize_label: False keeps the label at its original size (the evaluation protocol scores
        predictions upsampled to the label's full resolution).
    """

    size: tuple[int, int] | None = PAPER_SIZE
    scale: tuple[float, float] | None = None
    crop: tuple[int, int] | None = None
    flip: bool = False
    resize_label: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        for name in ("size", "crop"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or min(value) <= 0):
                raise ValueError(f"{name} must be a positive (height, width), got {value!r}")
        if self.scale is not None and not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {self.scale!r}")
        if not self.resize_label and (self.scale or self.crop or self.flip):
            raise ValueError("resize_label=False is for evaluation: it cannot be combined with "
                             "scale, crop or flip, which would misalign image and label")

    @property
    def is_random(self) -> bool:
        return bool(self.scale or self.crop or self.flip)

    def __call__(self, image: Image.Image, label: np.ndarray | None,
                 rng: np.random.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (3xHxW float32 normalised image, HxW int64 label or None)."""
        if self.is_random and rng is None:
            raise ValueError("a random transform needs rng")
        label_image = None
        if label is not None:
            label_image = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8))
        if self.size is not None:
            image, label_image = self._resize(image, label_image, self.size,
                                              keep_label=not self.resize_label)
        if self.scale is not None:
            factor = rng.uniform(*self.scale)
            height, width = image.height, image.width
            image, label_image = self._resize(
                image, label_image, (max(1, round(height * factor)), max(1, round(width * factor))))
        if self.crop is not None:
            image, label_image = self._random_crop(image, label_image, self.crop, rng)
        if self.flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if label_image is not None:
                label_image = label_image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tensor = self.normalize(np.asarray(image))
        target = None if label_image is None else torch.from_numpy(
            np.asarray(label_image, dtype=np.uint8).astype(np.int64))
        return tensor, target

    def normalize(self, rgb: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 RGB -> 3xHxW float32, (x / 255 - mean) / std."""
        tensor = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return tensor.sub_(mean).div_(std)

    @staticmethod
    def _resize(image: Image.Image, label: Image.Image | None, size: tuple[int, int],
                keep_label: bool = False) -> tuple[Image.Image, Image.Image | None]:
        height, width = size
        if (image.height, image.width) != (height, width):
            image = image.resize((width, height), Image.Resampling.BICUBIC)
        if label is not None and not keep_label and (label.height, label.width) != (height, width):
            label = label.resize((width, height), Image.Resampling.NEAREST)
        return image, label

    @staticmethod
    def _random_crop(image: Image.Image, label: Image.Image | None, size: tuple[int, int],
                     rng: np.random.Generator) -> tuple[Image.Image, Image.Image | None]:
        height, width = size
        if image.height < height or image.width < width:  # pad: black image, ignored label
            canvas = Image.new("RGB", (max(width, image.width), max(height, image.height)))
            canvas.paste(image, (0, 0))
            image = canvas
            if label is not None:
                label_canvas = Image.new("L", image.size, IGNORE_INDEX)
                label_canvas.paste(label, (0, 0))
                label = label_canvas
        top = int(rng.integers(0, image.height - height + 1))
        left = int(rng.integers(0, image.width - width + 1))
        box = (left, top, left + width, top + height)
        return image.crop(box), (label.crop(box) if label is not None else None)
