"""Complexity report, ``python -m rtda.complexity``: Table III of the paper, extended.

For each discriminator at the paper's input (19 x 512 x 1024): parameters, GFLOPs and forward /
forward+backward time, eager PyTorch vs the fused ``rtda_kernels`` layers. For BiSeNet on each
backbone: parameters, GFLOPs and inference time at 3 x 512 x 1024 and 3 x 1024 x 2048.

Every figure is counted or measured when the command runs, nothing is a constant: parameters by
summing ``numel``, FLOPs by ``torch.utils.flop_counter`` (FLOPs = 2 x multiply-adds of the
convolutions and matmuls, per image, counted on the meta device so no memory or time is spent),
times as the median of ``--repeats`` runs after one warm-up, eager and fused interleaved so that
noise hits both alike.

Times are taken with ``rtda.timing`` (interleaved medians, under the allocator setting every
timing tool of the repository shares).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import rtda_kernels
from rtda.cli import add_version
from rtda.machine import cpu_description
from rtda.timing import time_interleaved, timing_allocator
from rtda.models import BACKBONES, DISCRIMINATORS, build_discriminator, build_segmenter

DISCRIMINATOR_INPUT = (19, 512, 1024)
SEGMENTER_INPUTS = ((3, 512, 1024), (3, 1024, 2048))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass on one input of ``input_shape`` (C, H, W), counted on a meta
    copy of ``model`` (no data is computed)."""
    meta = copy.deepcopy(model).to("meta").eval()
    x = torch.empty((1, *input_shape), device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(x)
    return int(counter.get_total_flops())


def _forward(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def step() -> object:
        with torch.no_grad():
            return model(x)
    return step


def _forward_backward(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """Forward and backward into the parameters and the input (the adversarial step needs the
    input's gradient, the discriminator's own step the parameters')."""
    leaf = x.detach().requires_grad_()

    def step() -> object:
        model.zero_grad(set_to_none=True)
        leaf.grad = None
        model(leaf).sum().backward()
    return step


def _progress(message: str) -> None:
    print(f"[rtda.complexity] {message}", file=sys.stderr, flush=True)


def discriminator_rows(names: Sequence[str], input_shape: Sequence[int], batch_size: int,
                       repeats: int, device: torch.device) -> list[dict]:
    rows = []
    for name in names:
        eager = build_discriminator(name, input_shape[0], fused=False).to(device)
        row = {"name": name, "input": list(input_shape), "params": count_parameters(eager),
               "gflops": count_flops(eager, input_shape) / 1e9}
        if repeats > 0:
            fused = build_discriminator(name, input_shape[0], fused=True).to(device)
            fused.load_state_dict(eager.state_dict())
            x = torch.rand((batch_size, *input_shape), device=device)
            for pass_, make in (("fwd", _forward), ("fwd+bwd", _forward_backward)):
                _progress(f"timing {name} {pass_}, batch {batch_size}, {repeats} repeats")
                medians = time_interleaved(
                    {"eager": make(eager, x), "fused": make(fused, x)}, repeats, device
                )
                row[f"{pass_}_eager_ms"] = medians["eager"]
                row[f"{pass_}_fused_ms"] = medians["fused"]
                row[f"{pass_}_speedup"] = medians["eager"] / medians["fused"]
        rows.append(row)
    return rows


def segmenter_rows(backbones: Sequence[str], input_shapes: Sequence[Sequence[int]],
                   batch_size: int, repeats: int, device: torch.device) -> list[dict]:
    rows = []
    for backbone in backbones:
        model = build_segmenter(backbone).to(device).eval()
        params = count_parameters(model)
        for shape in input_shapes:
            row = {"name": f"bisenet_{backbone}", "input": list(shape), "params": params,
                   "gflops": count_flops(model, shape) / 1e9}
            if repeats > 0:
                _progress(f"timing bisenet_{backbone} inference at {shape}, batch {batch_size}, "
                          f"{repeats} repeats")
                x = torch.rand((batch_size, *shape), device=device)
                row["inference_ms"] = time_interleaved({"eager": _forward(model, x)}, repeats,
                                                       device)["eager"]
            rows.append(row)
    return rows


def _size(text: str) -> tuple[int, int]:
    """``WxH`` (width x height, like the rest of the CLI) -> ``(height, width)``."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 1024x512, got {text!r}") from None
    if height < 32 or width < 32 or height % 32 or width % 32:
        raise argparse.ArgumentTypeError(
            f"W and H must be multiples of 32, got {text!r} (W = {width}, H = {height})")
    return height, width


def _names(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        unknown = [v for v in names if v not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}; got {text!r}")
        return names
    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rtda.complexity",
        description="Parameters, GFLOPs (torch.utils.flop_counter, 2 x multiply-adds, per image) "
        "and measured time of the discriminators (eager vs fused) and of BiSeNet: the paper's "
        "Table III, reproduced by counting.",
    )
    parser.add_argument("--format", choices=("text", "md"), default="text",
                        help="table style: aligned text (default) or Markdown")
    parser.add_argument("--json", action="store_true",
                        help="print the report as JSON (for scripts) instead of a table")
    parser.add_argument("--device", default="cpu", help="where to time the models (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="batch of the timed runs (FLOPs are per image; default: 1)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs per model and pass, after a warm-up; the median is shown "
                        "(0: count only, no timing; default: 5)")
    parser.add_argument("--discriminators", type=_names(DISCRIMINATORS),
                        default=list(DISCRIMINATORS), metavar="NAMES",
                        help=f"comma-separated subset of {','.join(DISCRIMINATORS)} (default: all)")
    parser.add_argument("--backbones", type=_names(BACKBONES), default=list(BACKBONES),
                        metavar="NAMES",
                        help=f"comma-separated subset of {','.join(BACKBONES)} (default: all)")
    parser.add_argument("--discriminator-size", type=_size, default=DISCRIMINATOR_INPUT[1:],
                        metavar="WxH", help="discriminator input size, width x height "
                        "(default: 1024x512)")
    parser.add_argument("--in-channels", type=int, default=DISCRIMINATOR_INPUT[0],
                        help="discriminator input channels, i.e. classes (default: 19)")
    parser.add_argument("--segmenter-sizes", type=lambda t: [_size(v) for v in t.split(",")],
                        default=[s[1:] for s in SEGMENTER_INPUTS], metavar="WxH[,WxH]",
                        help="BiSeNet input sizes, width x height (default: 1024x512,2048x1024)")
    parser.add_argument("--no-segmenter", action="store_true", help="discriminators only")
    parser.add_argument("--default-malloc", action="store_true",
                        help="time under glibc malloc's defaults instead of the setting every "
                        "timing tool here uses (freed memory kept: see timing_allocator)")
    args = add_version(parser).parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.repeats < 0:
        parser.error(f"--repeats must be >= 0, got {args.repeats}")
    if args.in_channels < 1:
        parser.error(f"--in-channels must be >= 1, got {args.in_channels}")
    try:
        args.device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device: {error}")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    return args


def build_report(args: argparse.Namespace) -> dict:
    allocator = timing_allocator(args.default_malloc) if args.repeats > 0 else None
    discriminator_input = (args.in_channels, *args.discriminator_size)
    report = {
        "discriminators": discriminator_rows(args.discriminators, discriminator_input,
                                             args.batch_size, args.repeats, args.device),
        "segmenters": [] if args.no_segmenter else segmenter_rows(
            args.backbones, [(3, *s) for s in args.segmenter_sizes], args.batch_size,
            args.repeats, args.device),
        "environment": {
            "torch": torch.__version__, "device": str(args.device),
            "threads": torch.get_num_threads(), "cpu": cpu_description(),
            "batch_size": args.batch_size, "repeats": args.repeats,
            "fused_backend": rtda_kernels.select_backend("dwsep_conv2d", args.device),
            "allocator": allocator,
        },
    }
    return report


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(v) for v in column) for column in zip(header, *rows)]
    fmt = lambda row: "  ".join(  # noqa: E731
        v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def format_report(report: dict, markdown: bool) -> str:
    env = report["environment"]
    timed = env["repeats"] > 0
    shape = "x".join(map(str, report["discriminators"][0]["input"])) if report["discriminators"] else ""
    header = ["discriminator", "params", "GFLOPs"]
    if timed:
        header += ["fwd eager ms", "fwd fused ms", "fwd x", "fwd+bwd eager ms", "fwd+bwd fused ms",
                   "fwd+bwd x"]
    rows = []
    for r in report["discriminators"]:
        row = [r["name"], f"{r['params']:,}", f"{r['gflops']:.2f}"]
        if timed:
            for pass_ in ("fwd", "fwd+bwd"):
                row += [f"{r[f'{pass_}_eager_ms']:.1f}", f"{r[f'{pass_}_fused_ms']:.1f}",
                        f"{r[f'{pass_}_speedup']:.2f}"]
        rows.append(row)
    parts = []
    if rows:
        parts += [f"Discriminators, input {shape} (GFLOPs per image)", _table(header, rows, markdown)]
    if report["segmenters"]:
        header = ["segmenter", "input", "params", "GFLOPs"] + (["inference ms"] if timed else [])
        rows = [[r["name"], "x".join(map(str, r["input"])), f"{r['params']:,}", f"{r['gflops']:.1f}"]
                + ([f"{r['inference_ms']:.1f}"] if timed else []) for r in report["segmenters"]]
        parts += ["", "Segmenters (GFLOPs per image)", _table(header, rows, markdown)]
    if timed:
        parts += ["", f"Times: median of {env['repeats']} runs after a warm-up, batch "
                  f"{env['batch_size']}, {env['device']} ({env['cpu']}, {env['threads']} threads), "
                  f"torch {env['torch']}, {env['allocator']}; fused layers on the "
                  f"{env['fused_backend']!r} backend; "
                  "'x' is eager time / fused time. fcd has no depthwise-separable layer: its "
                  "fused and eager models are the same."]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = build_report(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report, markdown=args.format == "md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
