"""Training: configs and presets, the resumable sampler, the step (fused == plain), each mode,
checkpoint/resume equality, SIGTERM/SIGKILL, NaN handling and bad input."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from rtda.models import build_discriminator, build_segmenter
from rtda.train import run_checkpoints
from rtda.train.__main__ import main
from rtda.train.config import resolve_config
from rtda.train.run import Trainer, TrainingDiverged
from rtda.train.sampler import ResumableSampler
from rtda.train.step import StepSettings, train_step
from tests.rtda.data_trees import small_toy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return small_toy(tmp_path_factory.mktemp("toy"), images=6, val=2)


def _config(toy, out, **overrides):
    values = dict(source_root=str(toy.source), target_root=str(toy.target), resolution=(64, 128),
                  batch_size=2, iterations=4, workers=0, log_every=1, val_every=100,
                  checkpoint_every=2, out=str(out), fused=True)
    values.update(overrides)
    return resolve_config("toy", overrides=values)


def _cli_args(toy, out, *extra):
    return ["--preset", "toy", "--source-root", str(toy.source), "--target-root",
            str(toy.target), "--resolution", "128x64", "--batch-size", "2", "--workers", "0",
            "--log-every", "1", "--val-every", "100", "--out", str(out), "--quiet", "--fused",
            *extra]


# -- configuration ---------------------------------------------------------------------------
def test_presets_and_overrides(tmp_path):
    paper = resolve_config("paper")
    assert (paper.backbone, paper.discriminator, paper.batch_size, paper.iterations) == (
        "resnet101", "fcd_light_thin", 4, 30000)
    assert (paper.seg_lr, paper.d_lr, paper.lambda_adv, paper.resolution) == (
        2.5e-4, 1e-5, 0.01, (512, 1024))
    assert paper.d_betas == (0.9, 0.99) and paper.weight_decay == 5e-4
    authors = resolve_config("authors-code")
    assert (authors.lambda_adv, authors.d_lr, authors.seg_lr, authors.batch_size) == (
        0.001, 2e-4, 5e-4, 2)
    assert authors.iterations == 60000 and authors.horizon == 125000
    (tmp_path / "c.yaml").write_text("lambda-adv: 0.5\nresolution: 256x128\nseed: 3\n")
    (tmp_path / "c.toml").write_text("iterations = 7\nresolution = [64, 96]\n")
    config = resolve_config("paper", tmp_path / "c.yaml", {"seed": 9})
    assert (config.lambda_adv, config.resolution, config.seed) == (0.5, (128, 256), 9)
    assert resolve_config("toy", tmp_path / "c.toml").resolution == (64, 96)


@pytest.mark.parametrize("bad, message", [
    ({"mode": "both"}, "mode must be one of"), ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"resolution": (100, 64)}, "multiples of 32"), ({"colour": 1}, "unknown key in overrides: colour"),
    ({"schedule_iterations": 10, "iterations": 20}, "schedule_iterations"),
])
def test_config_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        resolve_config("paper", overrides=bad)
    with pytest.raises(ValueError, match="preset must be one of"):
        resolve_config("fast")


# -- sampler ---------------------------------------------------------------------------------
def test_sampler_is_resumable_and_shards_the_global_order():
    whole = ResumableSampler(7, seed=1)
    first = [s for _, s in zip(range(20), whole)]
    assert sorted(i for i, _ in first[:7]) == list(range(7))  # an epoch is a permutation
    assert first[:7] != first[7:14]  # a new order each epoch
    resumed = ResumableSampler(7, seed=1, start=9)
    assert [s for _, s in zip(range(11), resumed)] == first[9:]
    shards = [ResumableSampler(7, seed=1, num_replicas=2, rank=r) for r in (0, 1)]
    a, b = ([s for _, s in zip(range(10), shard)] for shard in shards)
    assert [x for pair in zip(a, b) for x in pair] == first
    assert len({seed for _, seed in first}) == 20  # each draw its own augmentation seed


# -- the step ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fcd_light_thin", "fcd_light"])
def test_fused_and_plain_steps_give_the_same_losses(name):
    torch.manual_seed(0)
    segmenter = build_segmenter("resnet18")
    histories = []
    for fused in (False, True):
        torch.manual_seed(1)
        discriminator = build_discriminator(name, fused=fused)
        seg = copy.deepcopy(segmenter)
        seg_opt = torch.optim.SGD(seg.parameters(), lr=1e-2, momentum=0.9)
        d_opt = torch.optim.Adam(discriminator.parameters(), lr=1e-4, betas=(0.9, 0.99))
        generator = torch.Generator().manual_seed(5)
        history = []
        for _ in range(3):
            source = {"image": torch.randn(2, 3, 64, 96, generator=generator),
                      "label": torch.randint(0, 19, (2, 64, 96), generator=generator)}
            target = {"image": torch.randn(2, 3, 64, 96, generator=generator)}
            history.append(train_step(seg, discriminator, seg_opt, d_opt, source, target,
                                      StepSettings(fused=fused,
                                                   upsample_map=name == "fcd_light")))
        histories.append(history)
    for plain, fused in zip(*histories):
        assert plain.keys() == fused.keys() == {"seg", "adv", "d"}
        for key in plain:
            assert fused[key] == pytest.approx(plain[key], rel=1e-5, abs=1e-6)


def test_adversarial_step_gives_the_discriminator_no_gradient_from_the_segmenter_loss():
    torch.manual_seed(0)
    seg, disc = build_segmenter("resnet18"), build_discriminator("fcd_light_thin")
    settings = StepSettings(lambda_adv=1.0, upsample_map=False)
    seg_opt = torch.optim.SGD(seg.parameters(), lr=0.0)
    d_opt = torch.optim.SGD(disc.parameters(), lr=0.0)
    source = {"image": torch.randn(2, 3, 64, 64), "label": torch.randint(0, 19, (2, 64, 64))}
    target = {"image": torch.randn(2, 3, 64, 64)}
    train_step(seg, disc, seg_opt, d_opt, source, target, settings)
    with_adv = [p.grad.clone() for p in disc.parameters()]
    # the D gradient must equal the gradient of Eq. (1) alone
    seg.train()
    with torch.no_grad():
        ps = torch.softmax(seg(source["image"])[0], 1)
        pt = torch.softmax(seg(target["image"])[0], 1)
    disc.zero_grad()
    from rtda_kernels import reference

    reference.discriminator_loss(disc(ps), disc(pt)).backward()
    for got, expected in zip(with_adv, (p.grad for p in disc.parameters())):
        assert torch.allclose(got, expected, atol=1e-6, rtol=1e-4)


# -- runs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["adapt", "source-only", "target-only"])
def test_each_mode_trains_and_checkpoints(toy, tmp_path, mode):
    trainer = Trainer(_config(toy, tmp_path / mode, mode=mode, iterations=2, val_every=2),
                      progress=False)
    result = trainer.train()
    assert result["iteration"] == 2 and result["reason"] == "finished"
    assert result["val_miou"] is not None and 0 <= result["val_miou"] <= 1
    assert set(result["losses"]) == ({"seg", "adv", "d"} if mode == "adapt" else {"seg"})
    state = run_checkpoints.read(tmp_path / mode / "last.pt")
    assert ("discriminator" in state) == (mode == "adapt")
    assert (tmp_path / mode / "best.pt").is_file() and (tmp_path / mode / "config.yaml").is_file()
    rows = (tmp_path / mode / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3  # two training rows and one validation row


def _states_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_resume_reaches_the_same_state(toy, tmp_path):
    Trainer(_config(toy, tmp_path / "whole"), progress=False).train()
    Trainer(_config(toy, tmp_path / "part", iterations=2, schedule_iterations=4),
            progress=False).train()
    assert main(["--resume", str(tmp_path / "part"), "--iterations", "4", "--quiet"]) == 0
    whole = run_checkpoints.read(tmp_path / "whole" / "last.pt")
    part = run_checkpoints.read(tmp_path / "part" / "last.pt")
    assert part["iteration"] == 4 and part["data"] == whole["data"]
    assert _states_equal(whole["model"], part["model"])
    assert _states_equal(whole["discriminator"], part["discriminator"])
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["iteration"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]


def _spawn(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "rtda.train", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, process, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"training exited early: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.2)


def test_sigkill_loses_only_the_steps_since_the_last_checkpoint(toy, tmp_path):
    run = tmp_path / "killed"
    process = _spawn(_cli_args(toy, run, "--iterations", "40", "--checkpoint-every", "2"),
                     tmp_path)
    _wait_for(run / "iter_000002.pt", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "last.pt").exists()
    stopped_at = run_checkpoints.read(run_checkpoints.latest(run))["iteration"]
    assert stopped_at >= 2
    assert main(["--resume", str(run), "--iterations", str(stopped_at + 2), "--quiet"]) == 0
    Trainer(_config(toy, tmp_path / "reference", iterations=stopped_at + 2,
                    schedule_iterations=40), progress=False).train()
    assert _states_equal(run_checkpoints.read(run / "last.pt")["model"],
                         run_checkpoints.read(tmp_path / "reference" / "last.pt")["model"])


def test_sigterm_saves_and_exits_cleanly(toy, tmp_path):
    run = tmp_path / "terminated"
    process = _spawn(_cli_args(toy, run, "--iterations", "400", "--checkpoint-every", "1"),
                     tmp_path)
    _wait_for(run / "iter_000001.pt", process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    assert "stopped at iteration" in out and f"--resume {run}" in out
    assert 1 <= run_checkpoints.read(run / "last.pt")["iteration"] < 400


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(toy, tmp_path, monkeypatch):
    import rtda.train.run as run_module

    real_step, calls = run_module.train_step, []

    def failing_step(*args, **kwargs):
        losses = real_step(*args, **kwargs)
        calls.append(1)
        return {**losses, "adv": float("nan")} if len(calls) == 3 else losses

    monkeypatch.setattr(run_module, "train_step", failing_step)
    trainer = Trainer(_config(toy, tmp_path / "nan", iterations=6, checkpoint_every=2),
                      progress=False)
    with pytest.raises(TrainingDiverged, match=r"iteration 3: loss adv = nan is not finite"):
        trainer.train()
    assert run_checkpoints.read(run_checkpoints.latest(tmp_path / "nan"))["iteration"] == 2
    assert not (tmp_path / "nan" / "last.pt").exists()


def test_bad_input(toy, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--preset", "fastest"])
    assert main(["--source", "gta5", "--target", "toy", "--quiet", "--out",
                 str(tmp_path / "x")]) == 2
    assert "--source-root is required" in capsys.readouterr().err
    assert main(["--source", "gta5", "--source-root", str(tmp_path / "none"), "--target", "toy",
                 "--target-root", str(toy.target), "--quiet", "--out", str(tmp_path / "x")]) == 2
    assert "gta5 root not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--resume", str(tmp_path / "empty")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    (tmp_path / "foreign").mkdir()
    torch.save(build_segmenter("resnet18").state_dict(), tmp_path / "foreign" / "last.pt")
    assert main(["--resume", str(tmp_path / "foreign")]) == 2
    assert "not an RTDA training checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--resume", str(tmp_path / "empty"), "--lambda-adv", "1"])
    assert "cannot be combined with --lambda-adv" in capsys.readouterr().err


_WORKER = """
import json, sys, torch, torch.distributed as dist
from rtda.train.config import resolve_config
from rtda.train.run import Trainer
config = resolve_config("toy", overrides=json.loads(sys.argv[1]))
trainer = Trainer(config, progress=False)
trainer.train()
sums = [float(sum(p.double().sum() for p in m.parameters()))
        for m in (trainer.segmenter, trainer.discriminator)]
gathered = [None] * dist.get_world_size()
dist.all_gather_object(gathered, sums)
if dist.get_rank() == 0:
    json.dump(gathered, open(sys.argv[2], "w"))
dist.destroy_process_group()  # else gloo's threads can abort the interpreter's exit
"""


def test_two_gloo_processes_match_one_process(toy, tmp_path):
    """torchrun with 2 CPU processes (gloo, batch 2 each) against 1 process with batch 4.

    BatchNorm normalises each process's half batch with its own statistics (SyncBatchNorm needs
    CUDA), so the losses agree closely, not bitwise; the replicas must stay identical, which they
    would not if the gradients were not averaged."""
    overrides = dict(source_root=str(toy.source), target_root=str(toy.target),
                     resolution=[64, 128], batch_size=4, iterations=2, workers=0, log_every=1,
                     val_every=100, checkpoint_every=100, fused=True)
    (tmp_path / "worker.py").write_text(_WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        # --standalone: a free port, so that concurrent test runs do not meet on 29500
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "worker.py",
         json.dumps({**overrides, "out": str(tmp_path / "two")}), str(tmp_path / "sums.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = json.loads((tmp_path / "sums.json").read_text())
    assert rank0 == rank1  # the replicas are bitwise in sync
    Trainer(_config(toy, tmp_path / "one", iterations=2, batch_size=4), progress=False).train()
    rows = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]
            for name in ("one", "two")}
    assert [r["kind"] for r in rows["one"]] == [r["kind"] for r in rows["two"]]
    for one, two in zip(rows["one"], rows["two"]):
        if one["kind"] == "train":
            assert two["seg"] == pytest.approx(one["seg"], rel=0.02)
            assert two["adv"] == pytest.approx(one["adv"], rel=1e-3)
            assert two["d"] == pytest.approx(one["d"], rel=1e-3)
    one = run_checkpoints.read(tmp_path / "one" / "last.pt")
    two = run_checkpoints.read(tmp_path / "two" / "last.pt")
    assert one["data"] == two["data"]  # the same global samples were consumed


def test_bf16_autocast_iteration(toy, tmp_path):
    trainer = Trainer(_config(toy, tmp_path / "bf16", iterations=1, amp="bf16"), progress=False)
    result = trainer.train()
    assert result["iteration"] == 1 and all(math.isfinite(v) for v in result["losses"].values())
    with pytest.raises(ValueError, match="amp must be one of"):
        resolve_config("toy", overrides={"amp": "fp8"})


def test_table1_runs_each_row_and_reads_finished_runs_back(toy, tmp_path, capsys):
    from rtda.train import table1

    argv = ["--seeds", "0", "1", "--out", str(tmp_path / "t"), "--iterations", "1",
            "--source-root", str(toy.source), "--target-root", str(toy.target),
            "--resolution", "128x64", "--workers", "0", "--quiet"]
    assert table1.main(argv) == 0
    out = capsys.readouterr().out
    assert "| source only |" in out and "| target only (oracle) |" in out and "± " in out
    assert "| source only + target BN (adapt, lambda_adv 0) |" in out
    assert "| self-training (EMA teacher, ClassMix, rare-class sampling; fused) |" in out
    assert "| adversarial + self-training (fused) |" in out and "s / iteration |" in out
    assert len(list((tmp_path / "t").glob("*-seed*"))) == 12
    both = yaml.safe_load((tmp_path / "t" / "both-seed1" / "config.yaml").read_text())
    assert (both["method"], both["fused"]) == ("both", True)
    bn = yaml.safe_load((tmp_path / "t" / "target-bn-seed0" / "config.yaml").read_text())
    assert (bn["mode"], bn["lambda_adv"], bn["preset"]) == ("adapt", 0.0, "toy")
    assert "Table I, toy -> toy" in (tmp_path / "t" / "table1.md").read_text()
    stamp = (tmp_path / "t" / "adapt-fused-seed0" / "last.pt").stat().st_mtime_ns
    assert table1.main([*argv, "--resume"]) == 0  # finished runs are read back, not trained
    assert (tmp_path / "t" / "adapt-fused-seed0" / "last.pt").stat().st_mtime_ns == stamp
    assert capsys.readouterr().out.split("Table I")[1] == out.split("Table I")[1]


def test_table1_rows_selects_the_rows(toy, tmp_path, capsys):
    from rtda.train import table1

    argv = ["--seeds", "0", "--rows", "target-only", "--out", str(tmp_path / "t"),
            "--iterations", "1", "--source-root", str(toy.source), "--target-root",
            str(toy.target), "--resolution", "128x64", "--workers", "0", "--quiet"]
    assert table1.main(argv) == 0
    out = capsys.readouterr().out
    assert "| target only (oracle) |" in out and "| source only |" not in out
    assert [p.name for p in (tmp_path / "t").glob("*-seed*")] == ["target-only-seed0"]
    with pytest.raises(SystemExit):
        table1.main(["--rows", "oracle"])
    assert "invalid choice: 'oracle'" in capsys.readouterr().err


def test_table1_seconds_per_iteration_is_the_median_interval(tmp_path):
    from rtda.train import table1

    rows = [{"iteration": i, "kind": "train", "seconds": s}
            for i, s in ((10, 5.0), (20, 7.0), (30, 30.0), (40, 32.0))]  # 30: a validation
    rows.insert(2, {"iteration": 20, "kind": "val", "miou": 0.3})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert table1.seconds_per_iteration(tmp_path) == pytest.approx(0.2)
    assert table1.seconds_per_iteration(tmp_path / "missing") is None
