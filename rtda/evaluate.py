"""``python -m rtda.evaluate``: mIoU of segmenter checkpoints on a labelled split, and Fig. 2.

The paper's protocol: each image is resized to the training resolution and predicted; the logits
are upsampled bilinearly to the label's original size (2048x1024 for Cityscapes), the argmax is
compared with the label at full resolution. With no ``--root`` the built-in toy pair's target val
split is used (generated first if it is missing).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from rtda.checkpoint_io import CheckpointError, load_segmenter
from rtda.cli import add_version
from rtda.data import DATASETS, DatasetError, SegmentationDataset, build_dataset, collate
from rtda.data.labels import train_ids_to_label_ids
from rtda.data.transforms import PAPER_SIZE, SegmentationTransform, parse_size
from rtda.devices import resolve_device
from rtda.metrics import ConfusionMatrix, Scores
from rtda.models import OUTPUT_STRIDE
from rtda.predict import predict_full_resolution

EVAL_SUBSETS = (19, 16, 13)


def _labels_of(batch: dict) -> list[torch.Tensor]:
    labels = batch["label"]
    return list(labels) if isinstance(labels, torch.Tensor) else labels


def save_prediction(prediction: torch.Tensor, out: Path, name: str) -> None:
    """Writes ``out/trainIds/<name>`` (train ids) and ``out/labelIds/<name>`` (Cityscapes label ids,
    what the official evaluation reads)."""
    train_ids = prediction.to("cpu", torch.uint8).numpy()
    for folder, array in (("trainIds", train_ids), ("labelIds", train_ids_to_label_ids(train_ids))):
        path = (out / folder / name).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)


@dataclass
class Evaluation:
    """What one checkpoint scored: the confusion matrix and the files that were skipped."""

    checkpoint: str
    confusion: ConfusionMatrix
    images: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def scores(self, num_classes_eval: int = 19) -> Scores:
        return self.confusion.protocol_scores(num_classes_eval)

    def as_dict(self) -> dict:
        out = {"checkpoint": self.checkpoint, "images": self.images,
               "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}
        for n in EVAL_SUBSETS:
            out[f"classes{n}"] = self.scores(n).as_dict()
        return out


def evaluate(model: torch.nn.Module, dataset: SegmentationDataset, *, batch_size: int = 1,
             workers: int = 2, device: str | torch.device = "cpu",
             save_predictions: str | Path | None = None, progress: bool = True,
             name: str = "model") -> Evaluation:
    """Scores ``model`` (in eval mode) on ``dataset``, whose transform must keep labels at their
    original size. Returns the accumulated :class:`Evaluation`."""
    from tqdm import tqdm

    if dataset.transform.resize_label or dataset.transform.is_random:
        raise ValueError("evaluation needs a deterministic transform with resize_label=False")
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                        pin_memory=torch.device(device).type == "cuda")
    result = Evaluation(name, ConfusionMatrix(model.num_classes), skipped=list(dataset.skipped))
    model.eval()
    with torch.inference_mode():
        for batch in tqdm(loader, desc=f"evaluate {name}", unit="batch", disable=not progress):
            result.skipped.extend(batch["skipped"])
            if batch["image"] is None:
                continue
            labels = _labels_of(batch)
            predictions = predict_full_resolution(
                model, batch["image"].to(device), [lab.shape for lab in labels])
            for prediction, label, sample_name in zip(predictions, labels, batch["name"]):
                result.confusion.update(prediction.cpu(), label)
                if save_predictions is not None:
                    save_prediction(prediction, Path(save_predictions), sample_name)
            result.images += len(labels)
    for path, reason in result.skipped:
        warnings.warn(f"skipped {path}: {reason}", stacklevel=2)
    return result


def evaluation_dataset(dataset: str, root: str | None, split: str | None,
                       resolution: tuple[int, int],
                       skip_bad: bool = False, list_file: str | None = None) -> SegmentationDataset:
    """The labelled split to score, with the evaluation transform (image resized, label not)."""
    transform = SegmentationTransform(size=resolution, resize_label=False)
    if dataset == "toy" or root is None:
        if dataset not in ("toy", "cityscapes"):
            raise DatasetError(f"--root is required for --dataset {dataset}")
        from rtda.data.toy import MANIFEST, ensure_toy

        if root is None:
            root = str(ensure_toy().target)
        elif not (Path(root) / MANIFEST).is_file():
            raise DatasetError(f"{root} is not a toy pair (no {MANIFEST}); make one with "
                               f"python -m rtda.data.toy --out {root}")
        else:
            root = str(Path(root) / "target")
        dataset = "cityscapes"
    if dataset == "cityscapes":
        split = split or "val"
    return build_dataset(dataset, root, split, transform=transform, skip_bad=skip_bad,
                         list_file=list_file)


def _resolution(args: argparse.Namespace, config: dict) -> tuple[int, int]:
    if args.resolution is not None:
        resolution = parse_size(args.resolution, OUTPUT_STRIDE)
    elif config.get("resolution"):
        resolution = tuple(int(v) for v in config["resolution"])
    else:
        resolution = PAPER_SIZE
    if resolution[0] % OUTPUT_STRIDE or resolution[1] % OUTPUT_STRIDE:
        raise ValueError(f"resolution {resolution[1]}x{resolution[0]}: width and height must be "
                         f"multiples of {OUTPUT_STRIDE}")
    return resolution


def _format_row(title: str, evaluation: Evaluation) -> str:
    parts = []
    for n in EVAL_SUBSETS:
        miou = evaluation.scores(n).miou
        parts.append(f"mIoU{n} {'n/a' if math.isnan(miou) else f'{100 * miou:.2f}'}")
    return f"{title}: " + ", ".join(parts) + f" ({evaluation.images} images)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rtda.evaluate",
        description="Score segmenter checkpoints (mIoU, per-class IoU, pixel accuracy) on a "
                    "labelled split with the paper's protocol: predict at the training resolution, "
                    "upsample the logits to the label's full size, argmax. Without --root, the "
                    "built-in toy pair's target val split is used.")
    parser.add_argument("--checkpoint", action="append", required=True, metavar="PATH",
                        help="training checkpoint or bare BiSeNet state_dict; repeat to compare "
                             "several (each is scored; the figure gets one column per checkpoint)")
    parser.add_argument("--dataset", default="cityscapes", choices=(*DATASETS, "toy"),
                        help="layout of --root (default: %(default)s; 'toy': the built-in pair)")
    parser.add_argument("--root", default=None, help="dataset root (default: the toy pair)")
    parser.add_argument("--split", default=None,
                        help="Cityscapes split (default: val; GTA5 and SYNTHIA have none)")
    parser.add_argument("--list-file", default=None, help="file listing the images to score")
    parser.add_argument("--resolution", default=None, metavar="WxH",
                        help="prediction resolution, e.g. 1024x512 (default: the checkpoint's "
                             "training resolution, else 1024x512)")
    parser.add_argument("--num-classes-eval", type=int, default=19, choices=EVAL_SUBSETS,
                        help="classes in the printed table: 19 (Cityscapes), 16 or 13 "
                             "(SYNTHIA -> Cityscapes); all three go to --json")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="data loading processes")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--save-predictions", default=None, metavar="DIR",
                        help="write DIR/trainIds/... and DIR/labelIds/... PNGs (the label-id files "
                             "are what the official Cityscapes evaluation reads); first "
                             "checkpoint only")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the scores as JSON "
                                                                     "('-' for stdout)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="warn about unreadable or mis-sized files and skip them, instead of "
                             "stopping at the first")
    parser.add_argument("--figure", default=None, metavar="PNG",
                        help="also draw the paper's Fig. 2: RGB | one prediction per checkpoint | "
                             "ground truth")
    parser.add_argument("--figure-images", type=int, default=4, help="rows of the figure")
    parser.add_argument("--figure-titles", default=None,
                        help="comma-separated column titles for the checkpoints")
    parser.add_argument("--figure-only", action="store_true", help="skip the scoring pass")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return add_version(parser)


def _models(args: argparse.Namespace) -> Iterator[tuple[str, torch.nn.Module, dict]]:
    for path in args.checkpoint:
        model, config = load_segmenter(path, args.device)
        yield path, model, config


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.workers < 0 or args.figure_images < 1:
        parser.error("--batch-size and --figure-images must be >= 1, --workers >= 0")
    if args.figure_only and args.figure is None:
        parser.error("--figure-only needs --figure")
    try:
        args.device = resolve_device(args.device)
        models = list(_models(args))
        resolution = _resolution(args, models[0][2])
        dataset = evaluation_dataset(args.dataset, args.root, args.split, resolution,
                                     args.skip_bad, args.list_file)
        results = []
        if not args.figure_only:
            for i, (path, model, _) in enumerate(models):
                results.append(evaluate(
                    model, dataset, batch_size=args.batch_size, workers=args.workers,
                    device=args.device, progress=not args.quiet, name=Path(path).name,
                    save_predictions=args.save_predictions if i == 0 else None))
        if args.figure is not None:
            from rtda.figures import draw_predictions_figure

            titles = (args.figure_titles.split(",") if args.figure_titles
                      else [Path(p).stem for p in args.checkpoint])
            if len(titles) != len(models):
                parser.error(f"--figure-titles names {len(titles)} columns for "
                             f"{len(models)} checkpoints")
            draw_predictions_figure([m for _, m, _ in models], titles, dataset, args.figure,
                                    rows=args.figure_images, device=args.device)
    except (CheckpointError, DatasetError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for result in results:
        skipped = result.skipped
        split = getattr(dataset, "split", "all")
        print(f"\n{result.checkpoint} on {dataset.name} {split} "
              f"({dataset.root}), {args.num_classes_eval} classes:")
        print(result.scores(args.num_classes_eval).table())
        print(_format_row("summary", result))
        if skipped:
            print(f"skipped {len(skipped)} bad files (see the warnings above)")
    if args.figure is not None:
        print(f"figure written to {args.figure}")
    if args.json is not None and results:
        payload = {"dataset": dataset.name, "root": str(dataset.root),
                   "split": getattr(dataset, "split", "all"),
                   "resolution": list(resolution), "results": [r.as_dict() for r in results]}
        text = json.dumps(payload, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
