"""Reading images and label maps, with errors that name the file.

Pillow reads the RGB images and the 8-bit label maps (GTA5's palette PNGs hold their label ids as
palette indices, Cityscapes' ``*_labelIds.png`` are greyscale). SYNTHIA's labels are 16-bit PNGs
with several channels, which Pillow would truncate to 8 bits, so they are read with OpenCV, which
keeps 16 bits and returns the channels as BGR(A): the class id (SYNTHIA's first, red, channel) is
index 2.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

Image.MAX_IMAGE_PIXELS = 1 << 28  # a 2048x1024 Cityscapes frame is far below this; bombs are not


class DatasetError(ValueError):
    """A dataset cannot be used as given: a missing folder, a bad list file, no samples."""


class BadSampleError(DatasetError):
    """One sample cannot be read: a corrupt image, a missing or mis-sized label."""

    def __init__(self, path: str | os.PathLike, reason: str | None = None) -> None:
        if reason is None:
            # rebuilt from one message: by pickling, or by a DataLoader worker's re-raise, whose
            # message ends with the original "...BadSampleError: PATH: REASON" line
            last = str(path).rstrip().splitlines()[-1] if str(path).strip() else ""
            path, _, reason = last.split("BadSampleError: ", 1)[-1].partition(": ")
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise BadSampleError(path, "file not found")
    try:
        image = Image.open(path)
        image.load()  # decodes now, so a truncated file fails here, not later
    except (OSError, SyntaxError, ValueError) as err:
        raise BadSampleError(path, f"cannot decode image ({err})") from None
    return image


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """The image at ``path`` as an 8-bit RGB Pillow image, whatever its mode (greyscale, palette,
    alpha, CMYK, 16-bit and float greyscale)."""
    image = _open(Path(path))
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _to_8bit(image)
    return image.convert("RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float greyscale image scaled to 8 bits (Pillow's own
    ``convert`` clips such values at 255: a 16-bit image would come out white)."""
    values = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and values.max(initial=0) > 255):
        values = values / 257  # 0..65535 -> 0..255 (older Pillow opens 16-bit PNGs as "I")
    elif image.mode == "F" and values.max(initial=0) <= 1:
        values = values * 255  # float images in 0..1
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def read_label_ids(path: str | os.PathLike) -> np.ndarray:
    """An 8-bit label map (greyscale, or palette indices) as an HxW uint8 array."""
    path = Path(path)
    image = _open(path)
    if image.mode not in ("L", "P"):
        raise BadSampleError(path, f"expected an 8-bit greyscale or palette label map, "
                                   f"got a {image.mode!r} image")
    return np.asarray(image, dtype=np.uint8)


def read_synthia_label_ids(path: str | os.PathLike) -> np.ndarray:
    """A SYNTHIA label PNG (16-bit, several channels; the class id in the red channel) as an HxW
    uint16 array of class ids. A single-channel file is taken as the class ids themselves."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise BadSampleError(path, "file not found")
    data = np.fromfile(path, dtype=np.uint8)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if array is None:
        raise BadSampleError(path, "cannot decode image (not a readable PNG)")
    if array.ndim == 3:
        if array.shape[2] < 3:
            raise BadSampleError(path, f"expected 1, 3 or 4 channels, got {array.shape[2]}")
        array = array[:, :, 2]  # OpenCV's BGR(A) order: red is the third channel
    return np.ascontiguousarray(array, dtype=np.uint16)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file, read from its header only."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError) as err:
        raise BadSampleError(path, f"cannot read image header ({err})") from None
    return height, width
