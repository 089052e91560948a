"""``python -m rtda.train.table1``: Table I of the paper — target val mIoU of source-only
training, source-only training with target BatchNorm statistics, adaptation (``--fused``),
self-training and both (beyond the paper), and target-only training (the oracle), per seed, as
mean +- std, with each row's seconds per iteration. On the toy pair by default; any
source/target pair with ``--source``/``--target`` and their roots.

"source only + target BN" is the adaptation run with ``lambda_adv = 0``: the same data flow (the
target batch passes through the segmenter in train mode, so BatchNorm estimates its statistics on
both domains; the discriminator still trains) without the adversarial gradient. The gap between
it and the adapted row is what the adversarial term adds.

Each run is an ordinary ``rtda.train`` run in ``OUT/<row>-seed<N>`` (preset as ``rtda.train``
picks it: ``toy`` on the toy pair, ``paper`` with a real dataset), under the same rules: an OUT that holds runs is refused unless ``--resume`` (a run that finished is read
back, one that stopped is resumed, so the command can be interrupted and started again) or
``--overwrite`` (the runs are trained anew). The score is the final model's val mIoU (not the best
one, which would select on the val split).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

from rtda.cli import add_version
from rtda.train import run_checkpoints, rundir
from rtda.train.config import PRESETS, SOURCES, TARGETS, resolve_config
from rtda.train.run import Trainer

ROWS = (("source-only", "source only", {"mode": "source-only"}),
        ("target-bn", "source only + target BN (adapt, lambda_adv 0)",
         {"mode": "adapt", "fused": True, "lambda_adv": 0.0}),
        ("adapt-fused", "adapted (FCD-Light&Thin, fused)", {"mode": "adapt", "fused": True}),
        ("self-training", "self-training (EMA teacher, ClassMix, rare-class sampling; fused)",
         {"mode": "adapt", "fused": True, "method": "self-training"}),
        ("both", "adversarial + self-training (fused)",
         {"mode": "adapt", "fused": True, "method": "both"}),
        ("target-only", "target only (oracle)", {"mode": "target-only"}))


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _final_miou(run_dir: Path, iteration: int) -> float | None:
    scores = [r["miou"] for r in _metrics(run_dir)
              if r["kind"] == "val" and r["iteration"] == iteration]
    return scores[-1] if scores else None


def seconds_per_iteration(run_dir: Path) -> float | None:
    """The median over the run's log intervals of seconds per training iteration (validation,
    checkpoints and restarts fall between log rows of one interval at most, which the median
    ignores)."""
    rows = [r for r in _metrics(run_dir) if r["kind"] == "train"]
    steps = [(b["seconds"] - a["seconds"]) / (b["iteration"] - a["iteration"])
             for a, b in zip(rows, rows[1:])
             if b["iteration"] > a["iteration"] and b["seconds"] > a["seconds"]]
    return statistics.median(steps) if steps else None


def run_row(slug: str, overrides: dict, seed: int, out: Path, extra: dict, progress: bool,
            *, preset: str | None = None, resume: bool = False, overwrite: bool = False) -> float:
    """The final val mIoU of one (row, seed) run: trained, or with ``resume`` read back or
    resumed when the run exists."""
    run_dir = out / f"{slug}-seed{seed}"
    config = resolve_config(preset, overrides={**extra, **overrides, "seed": seed,
                                               "out": str(run_dir)})
    with rundir.claim(run_dir, resume=resume, overwrite=overwrite):
        state = None
        if resume and ((run_dir / "last.pt").exists() or any(run_dir.glob("iter_*.pt"))):
            state = run_checkpoints.read(run_checkpoints.latest(run_dir))
            if state["iteration"] >= config.iterations:
                miou = _final_miou(run_dir, config.iterations)
                if miou is not None:
                    return miou
        result = Trainer(config, resume=state, progress=progress).train()
    if result["reason"] != "finished" or result["val_miou"] is None:
        raise RuntimeError(f"{run_dir}: the run {result['reason']} at iteration "
                           f"{result['iteration']} without a final val score")
    return result["val_miou"]


def format_table(scores: dict[str, list[float]], seeds: list[int],
                 seconds: dict[str, list[float]] | None = None) -> str:
    """A Markdown table; the mean ± std column only when there are several seeds, the seconds
    per iteration (median of each run's, mean over the seeds) when given."""
    several = len(seeds) > 1
    timed = seconds is not None
    lines = ["| method | " + " | ".join(f"seed {s}" for s in seeds)
             + (" | mean ± std" if several else "") + (" | s / iteration" if timed else "") + " |",
             "|---|" + "---:|" * (len(seeds) + several + timed)]
    for _, title, _ in ROWS:
        if title not in scores:
            continue
        values = [100 * v for v in scores[title]]
        cells = [f"{v:.2f}" for v in values]
        if several:
            cells.append(f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}")
        if timed:
            known = [v for v in seconds.get(title, []) if v is not None]
            cells.append(f"{statistics.mean(known):.2f}" if known else "-")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rtda.train.table1", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", choices=[slug for slug, _, _ in ROWS],
                        default=[slug for slug, _, _ in ROWS], metavar="ROW",
                        help="the rows to train, of: " + ", ".join(s for s, _, _ in ROWS)
                             + " (default: all)")
    parser.add_argument("--out", type=Path, default=Path("runs/table1"))
    parser.add_argument("--preset", choices=tuple(PRESETS), default=None,
                        help="as rtda.train: toy on the toy pair, paper with a real dataset")
    parser.add_argument("--source", choices=SOURCES, default="toy")
    parser.add_argument("--target", choices=TARGETS, default="toy")
    parser.add_argument("--source-root", default=None,
                        help="the source dataset (default with the toy source: the built-in pair)")
    parser.add_argument("--target-root", default=None)
    parser.add_argument("--pretrained", default=None, metavar="PATH",
                        help="local torchvision ImageNet checkpoint of the backbone")
    parser.add_argument("--iterations", type=int, default=None,
                        help="iterations per run (default: the preset's)")
    parser.add_argument("--resolution", default=None, metavar="WxH")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--resume", action="store_true",
                        help="continue the runs in --out: read finished ones back, resume others")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the runs in --out (their files are deleted)")
    parser.add_argument("--quiet", action="store_true")
    args = add_version(parser).parse_args(argv)
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")
    existing = [p.name for p in sorted(args.out.glob("*-seed*")) if rundir.holds_run(p)]
    if existing and not (args.resume or args.overwrite):
        print(f"error: {args.out} already holds table-1 runs ({', '.join(existing[:3])}"
              f"{', ...' if len(existing) > 3 else ''}); continue them with --resume, replace "
              f"them with --overwrite, or choose another --out", file=sys.stderr)
        return 2
    extra = {k: v for k, v in {"source": args.source, "target": args.target,
                               "iterations": args.iterations, "source_root": args.source_root,
                               "target_root": args.target_root, "pretrained": args.pretrained,
                               "resolution": args.resolution,
                               "workers": args.workers}.items() if v is not None}
    rows = [row for row in ROWS if row[0] in args.rows]
    scores: dict[str, list[float]] = {title: [] for _, title, _ in rows}
    seconds: dict[str, list[float]] = {title: [] for _, title, _ in rows}
    try:
        for seed in args.seeds:
            for slug, title, overrides in rows:
                miou = run_row(slug, overrides, seed, args.out, extra, not args.quiet,
                               preset=args.preset, resume=args.resume, overwrite=args.overwrite)
                scores[title].append(miou)
                seconds[title].append(seconds_per_iteration(args.out / f"{slug}-seed{seed}"))
                print(f"seed {seed}, {title}: target val mIoU {100 * miou:.2f}", flush=True)
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = format_table(scores, args.seeds, seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    pair = f"{args.source} -> {args.target}"
    command = shlex.join(["python", "-m", "rtda.train.table1", *(argv if argv is not None
                                                                   else sys.argv[1:])])
    (args.out / "table1.md").write_text(
        f"Table I, {pair}, target val mIoU (%), from `{command}`:\n\n{table}\n")
    (args.out / "table1.json").write_text(json.dumps(
        {"pair": pair, "seeds": args.seeds, "command": command, "miou": scores,
         "seconds_per_iteration": seconds}, indent=2) + "\n")
    print(f"\nTable I, {pair} (target val mIoU, %):\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
