"""``python -m rtda.infer``: segment images (one file, a folder, a glob) or a video with a trained
checkpoint, through the lean runtime (``rtda.runtime.Segmenter``).

For each input it writes ``OUT/trainIds/<name>.png`` (train ids 0-18), ``OUT/labelIds/<name>.png``
(Cityscapes label ids, what the official evaluation reads) and ``OUT/overlay/<name>.png`` (the
image blended with the Cityscapes colours). ``<name>`` is the input's path relative to the folder
(or the glob's fixed part), without its extension; a video's frames are ``<video>/<frame>``, and
the overlay is also written as ``OUT/overlay/<video>.mp4``. An unreadable image is reported and
skipped; the rest are written. The last line gives the frames per second of segmentation
(pre-processing, model and argmax at the image's size; file reading and writing excluded) and
end to end.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rtda.checkpoint_io import CheckpointError
from rtda.cli import add_version
from rtda.data.images import BadSampleError, read_rgb
from rtda.data.labels import NUM_CLASSES, colorize, train_ids_to_label_ids
from rtda.data.transforms import parse_size
from rtda.models import OUTPUT_STRIDE
from rtda.runtime import PRECISIONS, Segmenter

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


class InputError(ValueError):
    """The --input names nothing that can be segmented."""


@dataclass(frozen=True)
class Frame:
    """One image to segment: its name in the outputs and where it came from."""

    name: str
    source: str  # the file (or "video#frame") for messages


def _is_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


def image_files(spec: str, recursive: bool = False) -> tuple[list[Path], Path]:
    """The image files ``spec`` names (a file, a folder, or a glob), sorted, and the folder their
    output names are relative to."""
    if _is_glob(spec):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise InputError(f"--input {spec!r} matches no file")
        base = Path(os.path.commonpath([str(p.parent) for p in files]))
        return files, base
    path = Path(spec)
    if path.is_file():
        return [path], path.parent
    if path.is_dir():
        pattern = "**/*" if recursive else "*"
        files = sorted(p for p in path.glob(pattern)
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            hint = "" if recursive else "; try --recursive"
            raise InputError(f"--input folder {path} holds no image "
                             f"({', '.join(IMAGE_SUFFIXES)}){hint}")
        return files, path
    raise InputError(f"--input {spec!r}: no such file or folder")


def read_images(files: list[Path], base: Path
                ) -> Iterator[tuple[Frame, np.ndarray | BadSampleError]]:
    """(frame, RGB array or the reason it could not be read) for each file."""
    for path in files:
        name = str(path.relative_to(base).with_suffix(""))
        try:
            yield Frame(name, str(path)), np.asarray(read_rgb(path))
        except BadSampleError as err:
            yield Frame(name, str(path)), err


def read_video(path: Path) -> tuple[Iterator[tuple[Frame, np.ndarray]], float, int]:
    """The frames of a video as RGB arrays (OpenCV), its frame rate and its frame count."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise InputError(f"cannot open video {path} (OpenCV could not decode it)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))

    def frames() -> Iterator[tuple[Frame, np.ndarray]]:
        index = 0
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                index += 1
                yield (Frame(f"{path.stem}/{index:06d}", f"{path}#{index}"),
                       cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            capture.release()
        if index == 0:
            raise InputError(f"video {path} has no readable frame")

    return frames(), fps, count


def overlay(rgb: np.ndarray, train_ids: np.ndarray, alpha: float) -> np.ndarray:
    """The image blended with the colours of its prediction: ``(1 - alpha) * rgb + alpha *
    colours``."""
    colours = colorize(train_ids).astype(np.float32)
    return ((1 - alpha) * rgb.astype(np.float32) + alpha * colours).round().astype(np.uint8)


def write_outputs(out: Path, name: str, rgb: np.ndarray, train_ids: np.ndarray,
                  alpha: float) -> np.ndarray:
    """Writes the three PNGs of one frame; returns the overlay."""
    blended = overlay(rgb, train_ids, alpha)
    for folder, array in (("trainIds", train_ids), ("labelIds", train_ids_to_label_ids(train_ids)),
                          ("overlay", blended)):
        path = out / folder / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)
    return blended


class VideoWriter:
    """The overlays of a video's frames as ``OUT/overlay/<video>.mp4`` (opened at the first
    frame, whose size it takes)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps, self._writer = path, fps, None

    def write(self, rgb: np.ndarray) -> None:
        import cv2

        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            height, width = rgb.shape[:2]
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"),
                                           self.fps, (width, height))
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rtda.infer",
        description="Segment images or a video with a trained checkpoint (BatchNorm folded, "
                    "auxiliary heads dropped, channels_last). Writes train-id PNGs, Cityscapes "
                    "label-id PNGs and colour overlays, and prints the frames per second.")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="training checkpoint or bare BiSeNet state_dict (19 classes)")
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="an image, a folder of images, a quoted glob ('data/**/*.png'), or "
                             f"a video ({', '.join(VIDEO_SUFFIXES)})")
    parser.add_argument("--output", default="predictions", metavar="DIR",
                        help="where trainIds/, labelIds/ and overlay/ go (default: %(default)s)")
    parser.add_argument("--recursive", action="store_true", help="also read a folder's subfolders")
    parser.add_argument("--resolution", default=None, metavar="WxH",
                        help="model input size, e.g. 1024x512 (default: the checkpoint's "
                             "training resolution, else 1024x512)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="float32", choices=tuple(PRECISIONS))
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (slow first frame, faster after)")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="overlay opacity of the colours, 0-1 (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return add_version(parser)


def _frames(args: argparse.Namespace) -> tuple[Iterator, int, VideoWriter | None]:
    path = Path(args.input)
    if not _is_glob(args.input) and path.suffix.lower() in VIDEO_SUFFIXES:
        if not path.is_file():
            raise InputError(f"--input {args.input!r}: no such file")
        frames, fps, count = read_video(path)
        return frames, count, VideoWriter(Path(args.output) / "overlay" / f"{path.stem}.mp4", fps)
    files, base = image_files(args.input, args.recursive)
    return read_images(files, base), len(files), None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"--alpha must be between 0 and 1, got {args.alpha}")
    resolution = None
    if args.resolution is not None:
        try:
            resolution = parse_size(args.resolution, OUTPUT_STRIDE)
        except ValueError as err:
            parser.error(str(err))
    try:
        frames, total, video = _frames(args)
        segmenter = Segmenter(args.checkpoint, device=args.device, precision=args.precision,
                              compile=args.compile, resolution=resolution, num_classes=NUM_CLASSES)
        written, skipped, seconds = _run(segmenter, frames, total, video, args)
    except (CheckpointError, InputError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for source, reason in skipped:
        print(f"skipped {source}: {reason}", file=sys.stderr)
    if not written:
        print("error: no image could be read", file=sys.stderr)
        return 2
    segment, total_time = seconds
    print(f"wrote {written} prediction{'s' * (written != 1)} to {args.output}"
          f"{f' ({len(skipped)} skipped)' if skipped else ''}; "
          f"{written / segment:.2f} frames/s segmenting, {written / total_time:.2f} frames/s "
          f"end to end")
    return 0


def _run(segmenter: Segmenter, frames: Iterator, total: int, video: VideoWriter | None,
         args: argparse.Namespace) -> tuple[int, list[tuple[str, str]], tuple[float, float]]:
    from tqdm import tqdm

    written, skipped, segment = 0, [], 0.0
    start = time.perf_counter()
    bar = tqdm(total=total or None, desc="segment", unit="img", disable=args.quiet)
    try:
        for frame, rgb in frames:
            bar.update()
            if isinstance(rgb, BadSampleError):
                skipped.append((frame.source, rgb.reason))
                continue
            began = time.perf_counter()
            train_ids = segmenter.predict(rgb)
            segment += time.perf_counter() - began
            blended = write_outputs(Path(args.output), frame.name, rgb, train_ids, args.alpha)
            if video is not None:
                video.write(blended)
            written += 1
    finally:
        bar.close()
        if video is not None:
            video.close()
    return written, skipped, (max(segment, 1e-9), max(time.perf_counter() - start, 1e-9))


if __name__ == "__main__":
    sys.exit(main())
