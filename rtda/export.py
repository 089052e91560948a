"""``python -m rtda.export``: ONNX export of a trained segmenter (or its discriminator), checked
with onnxruntime.

The segmenter is exported as the runtime runs it (``rtda.runtime.prepare_for_inference``:
BatchNorm folded, no auxiliary heads): input ``image`` N x 3 x H x W (normalised RGB), output
``logits`` N x 19 x H x W, with a dynamic batch and, with ``--dynamic-size``, dynamic H and W
(multiples of 32). The model goes through ``torch.export`` and the dynamo-based ONNX exporter.
The fused depthwise-separable layers of a discriminator (``rtda_kernels::dwsep_conv2d``) are
decomposed into their PyTorch reference before translation, so they become standard ONNX
``Conv`` (grouped) + ``Conv`` + ``LeakyRelu`` nodes.

After export the file is checked with onnxruntime on real images (default: the built-in toy
pair's target val split): the largest logit difference must be within ``--atol`` (1e-3) and the
argmax (the predicted class, or for a discriminator the domain decision) must agree on at least
99.9 % of the pixels; otherwise the command fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rtda.checkpoint_io import CheckpointError, load_segmenter, read_checkpoint
from rtda.cli import add_version
from rtda.data.images import BadSampleError, read_rgb
from rtda.data.transforms import parse_size
from rtda.models import DISCRIMINATORS, OUTPUT_STRIDE, build_discriminator
from rtda.runtime import image_batch, normalise, prepare_for_inference
from rtda_kernels.nn import WinogradConv2d

DEFAULT_OPSET = 18
MIN_OPSET = 17
ATOL = 1e-3
MIN_AGREEMENT = 0.999


class ExportError(RuntimeError):
    """The export failed, or the exported file does not compute what the model computes."""


def _fused_op_decompositions() -> dict:
    """rtda_kernels' fused ops -> their PyTorch reference, for ``run_decompositions``."""
    from rtda_kernels import reference

    def dwsep_conv2d(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, negative_slope):
        return reference.dwsep_conv2d(x, dw_weight, dw_bias, pw_weight, pw_bias, stride=stride,
                                      padding=padding, negative_slope=negative_slope)

    table = {}
    for name in ("dwsep_conv2d", "dwsep_conv2d_triton"):
        packet = getattr(torch.ops.rtda_kernels, name, None)
        if packet is not None:
            table[packet.default] = dwsep_conv2d
    return table


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, *,
                input_name: str, output_name: str, dynamic_size: bool = False,
                size_multiple: int = 1, opset: int = DEFAULT_OPSET) -> Path:
    """Export ``model`` (eval mode, one tensor in, one out) to ONNX at ``path``, batch dynamic and
    (``dynamic_size``) height and width dynamic in steps of ``size_multiple``."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    if any(isinstance(module, WinogradConv2d) for module in model.modules()):
        raise ValueError("model runs rtda_kernels' Winograd convolutions, which ONNX has no op "
                         "for: export a model prepared with prepare_for_inference(..., "
                         "winograd=False)")
    from torch.export import Dim

    axes = {0: Dim("batch", min=1, max=1024)}
    if dynamic_size:
        axes[2] = size_multiple * Dim("height_steps", min=1, max=4096 // size_multiple)
        axes[3] = size_multiple * Dim("width_steps", min=1, max=4096 // size_multiple)
    if example.shape[0] == 1:  # torch.export treats a size-1 dimension as static
        example = example.repeat(2, 1, 1, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_exporter():
        program = torch.export.export(model, (example,), dynamic_shapes=({**axes},))
        table = torch.export.default_decompositions()
        table.update(_fused_op_decompositions())
        program = program.run_decompositions(table)
        torch.onnx.export(program, (example,), str(path), input_names=[input_name],
                          output_names=[output_name], opset_version=opset, verbose=False,
                          external_data=False)
    return path


class _quiet_exporter:
    """Silences the exporter's progress prints and its warnings about optional packages."""

    def __enter__(self) -> None:
        self._level = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self._stdout = sys.stdout
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - restored in __exit__

    def __exit__(self, *exc: object) -> None:
        sys.stdout.close()
        sys.stdout = self._stdout
        self._warnings.__exit__(*exc)
        logging.getLogger("torch.onnx").setLevel(self._level)


@dataclass(frozen=True)
class CheckResult:
    """How an ONNX file's outputs compare with the model's on the check inputs."""

    max_abs_diff: float
    agreement: float  # fraction of pixels with the same argmax (or the same sign, one channel)
    images: int
    decision: str = "argmax"  # what ``agreement`` compares: "argmax", or "sign" for one channel

    def passed(self, atol: float = ATOL, min_agreement: float = MIN_AGREEMENT) -> bool:
        return self.max_abs_diff <= atol and self.agreement >= min_agreement

    def __str__(self) -> str:
        return (f"max |logit difference| {self.max_abs_diff:.2e}, same {self.decision} on "
                f"{100 * self.agreement:.3f} % of pixels ({self.images} images)")


def check_onnx(path: str | os.PathLike, model: nn.Module, inputs: torch.Tensor) -> CheckResult:
    """Run the ONNX file with onnxruntime on ``inputs`` (one at a time) and compare with
    ``model``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    worst, same, pixels, decision = 0.0, 0, 0, "argmax"
    with torch.inference_mode():
        for x in inputs.split(1):
            expected = model(x).float()
            got = torch.from_numpy(session.run(None, {name: x.numpy()})[0])
            if got.shape != expected.shape:
                raise ExportError(f"onnxruntime output has shape {tuple(got.shape)}, the model's "
                                  f"{tuple(expected.shape)}")
            worst = max(worst, float((got - expected).abs().max()))
            if expected.shape[1] == 1:
                decision = "sign"
                same += int(((got > 0) == (expected > 0)).sum())
            else:
                same += int((got.argmax(1) == expected.argmax(1)).sum())
            pixels += expected[:, 0].numel()
    return CheckResult(worst, same / pixels, inputs.shape[0], decision)


def check_images(spec: str | None, count: int, resolution: tuple[int, int]) -> torch.Tensor:
    """``count`` images named by ``spec`` (file, folder, glob; default: the toy pair's target val
    split), normalised at ``resolution`` as the runtime does it, as one batch."""
    from rtda.infer import image_files

    if spec is None:
        from rtda.data.toy import ensure_toy

        spec = str(ensure_toy().target / "leftImg8bit" / "val")
    files, _ = image_files(spec, recursive=True)
    images = []
    for path in files:
        try:
            images.append(np.asarray(read_rgb(path)))
        except BadSampleError as err:
            print(f"check: skipped {err}", file=sys.stderr)
        if len(images) == count:
            break
    if not images:
        raise ExportError(f"no readable check image in {spec}")
    batch, _ = image_batch(images, resolution)
    return normalise(batch.float().div_(255))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rtda.export",
        description="Export a checkpoint's segmenter (BatchNorm folded, auxiliary heads dropped) "
                    "or its discriminator to ONNX, then check the file with onnxruntime on real "
                    "images: logits within --atol, >= 99.9 %% of pixels with the same argmax.")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="training checkpoint (or a bare BiSeNet state_dict for the segmenter)")
    parser.add_argument("--output", default=None, metavar="FILE",
                        help="the .onnx file (default: next to the checkpoint, <name>.onnx or "
                             "<name>-discriminator.onnx)")
    parser.add_argument("--model", default="segmenter", choices=("segmenter", "discriminator"),
                        help="what to export (default: %(default)s)")
    parser.add_argument("--resolution", default=None, metavar="WxH",
                        help="input size of the exported graph and of the check, e.g. 1024x512 "
                             "(default: the checkpoint's training resolution, else 1024x512)")
    parser.add_argument("--dynamic-size", action="store_true",
                        help="dynamic height and width (multiples of 32) instead of fixed ones")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset, >= {MIN_OPSET} (default: %(default)s)")
    parser.add_argument("--check-images", default=None, metavar="PATH",
                        help="images for the onnxruntime check: a file, folder or glob (default: "
                             "the built-in toy pair's target val split)")
    parser.add_argument("--check-count", type=int, default=4, help="images checked (default: 4)")
    parser.add_argument("--atol", type=float, default=ATOL,
                        help="largest allowed logit difference (default: %(default)s)")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    return add_version(parser)


def _default_output(checkpoint: str, what: str) -> Path:
    path = Path(checkpoint)
    suffix = "" if what == "segmenter" else "-discriminator"
    return path.with_name(f"{path.stem}{suffix}.onnx")


def _discriminator(checkpoint: str) -> nn.Module:
    """The checkpoint's discriminator, built from the fused layers, in eval mode."""
    data = read_checkpoint(checkpoint)
    name = (data.get("config") or {}).get("discriminator")
    if "classifier.weight" not in data["model"]:
        raise CheckpointError(f"{checkpoint} is a bare state_dict, not a training checkpoint: "
                              f"--model discriminator needs an adapt run's checkpoint (e.g. its "
                              f"last.pt), which holds the segmenter whose output it reads")
    if "discriminator" not in data or name not in DISCRIMINATORS:
        raise CheckpointError(f"{checkpoint} holds no discriminator (it was not written by an "
                              f"adapt-mode training run)")
    classes = int(data["model"]["classifier.weight"].shape[0])
    disc = build_discriminator(name, classes, fused=True)
    try:
        disc.load_state_dict(data["discriminator"])
    except RuntimeError as err:
        raise CheckpointError(f"{checkpoint}: discriminator weights do not fit {name}: "
                              f"{err}") from None
    return disc.eval()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.opset < MIN_OPSET:
        parser.error(f"--opset must be >= {MIN_OPSET}, got {args.opset}")
    if args.check_count < 1:
        parser.error("--check-count must be >= 1")
    missing = [name for name in ("onnx", "onnxscript", *(() if args.no_check else
                                                         ("onnxruntime",)))
               if importlib.util.find_spec(name) is None]
    if missing:
        print(f"error: python -m rtda.export needs {', '.join(missing)}, which is not installed: "
              f"pip install 'rtda[export]' (or: pip install {' '.join(missing)})",
              file=sys.stderr)
        return 2
    try:
        discriminator = _discriminator(args.checkpoint) if args.model != "segmenter" else None
        segmenter, config = load_segmenter(args.checkpoint)
        resolution = (parse_size(args.resolution, OUTPUT_STRIDE) if args.resolution
                      else tuple(config.get("resolution", (512, 1024))))
        if resolution[0] % OUTPUT_STRIDE or resolution[1] % OUTPUT_STRIDE:
            raise ValueError(f"--resolution must be multiples of {OUTPUT_STRIDE}, got "
                             f"{resolution[1]}x{resolution[0]}")
        lean = prepare_for_inference(segmenter, winograd=False)
        inputs = (check_images(args.check_images, args.check_count, resolution)
                  if not args.no_check else torch.zeros(1, 3, *resolution))
        if args.model == "segmenter":
            model, example, names, multiple = lean, inputs[:1], ("image", "logits"), OUTPUT_STRIDE
        else:
            model = discriminator
            with torch.inference_mode():
                inputs = torch.softmax(lean(inputs), dim=1)
            example, names, multiple = inputs[:1].clone(), ("probabilities", "domain_logits"), \
                model.output_stride
        output = Path(args.output) if args.output else _default_output(args.checkpoint, args.model)
        export_onnx(model, example, output, input_name=names[0], output_name=names[1],
                    dynamic_size=args.dynamic_size, size_multiple=multiple, opset=args.opset)
        size = "H x W" if args.dynamic_size else " x ".join(map(str, example.shape[2:]))
        print(f"wrote {output} ({args.model}, opset {args.opset}, input {names[0]} "
              f"N x {example.shape[1]} x {size})")
        if args.no_check:
            return 0
        result = check_onnx(output, model, inputs)
    except (CheckpointError, ExportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"onnxruntime check: {result}")
    if not result.passed(args.atol):
        print(f"error: the exported model differs from the PyTorch one (allowed: {args.atol:.0e}, "
              f">= {100 * MIN_AGREEMENT:.1f} % same argmax)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
