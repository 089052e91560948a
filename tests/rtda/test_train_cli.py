"""``python -m rtda.train`` as a user meets it: how the configuration is resolved (preset x
dataset x out, from flags or a file), run directories that cannot be clobbered (refusal,
--overwrite, the lock, stale temporary files), the plain-text log, bad images and --skip-bad."""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import pytest
import yaml

from rtda.train import run_checkpoints, rundir
from rtda.train.__main__ import build_parser, config_from_args, main
from rtda.train.config import resolve_config, save_config
from tests.rtda.data_trees import small_toy

REAL = ["--source", "gta5", "--source-root", "/data/gta5", "--target", "cityscapes",
        "--target-root", "/data/cityscapes"]
REAL_KEYS = {"source": "gta5", "source_root": "/data/gta5", "target": "cityscapes",
             "target_root": "/data/cityscapes"}
SEG_LR = {"toy": 1e-2, "paper": 2.5e-4, "authors-code": 5e-4}
BACKBONE = {"toy": "resnet18", "paper": "resnet101", "authors-code": "resnet101"}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return small_toy(tmp_path_factory.mktemp("toy"), images=4, val=1)


def _args(toy, out, *extra):
    return ["--preset", "toy", "--source-root", str(toy.source), "--target-root",
            str(toy.target), "--resolution", "128x64", "--batch-size", "2", "--workers", "0",
            "--log-every", "1", "--val-every", "100", "--iterations", "1", "--out", str(out),
            "--quiet", *extra]


# -- configuration: preset (flag/file/none) x dataset (flag/file/none) x out (flag/file/none) -------
@pytest.mark.parametrize("preset, dataset, out",
                         list(itertools.product(("flag", "file", None), repeat=3)))
def test_config_resolution_matrix(tmp_path, monkeypatch, preset, dataset, out):
    monkeypatch.chdir(tmp_path)
    argv, in_file = [], {}
    if preset == "flag":
        argv += ["--preset", "authors-code"]
    elif preset == "file":
        in_file["preset"] = "authors-code"
    if dataset == "flag":
        argv += REAL
    elif dataset == "file":
        in_file.update(REAL_KEYS)
    if out == "flag":
        argv += ["--out", "runs/from-flag"]
    elif out == "file":
        in_file["out"] = "runs/from-file"
    if in_file:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(in_file))
        argv += ["--config", str(tmp_path / "c.yaml")]
    config = config_from_args(build_parser().parse_args(argv))
    expected = "authors-code" if preset else "paper" if dataset else "toy"
    assert config.preset == expected
    assert (config.seg_lr, config.backbone) == (SEG_LR[expected], BACKBONE[expected])
    assert config.source == ("gta5" if dataset or expected != "toy" else "toy")
    if dataset:
        assert (config.source_root, config.target_root) == ("/data/gta5", "/data/cityscapes")
    assert config.out == {"flag": "runs/from-flag", "file": "runs/from-file",
                          None: f"runs/{expected}-adapt-seed0"}[out]


def test_flags_win_over_the_file_and_toy_names_keep_the_toy_preset(tmp_path):
    (tmp_path / "c.yaml").write_text("preset: authors-code\nseg_lr: 0.5\nout: a\n")
    config = config_from_args(build_parser().parse_args(
        ["--config", str(tmp_path / "c.yaml"), "--preset", "toy", "--seg-lr", "0.25",
         "--out", "b"]))
    assert (config.preset, config.seg_lr, config.out, config.backbone) == (
        "toy", 0.25, "b", "resnet18")
    for argv in (["--source", "toy"], ["--target", "toy"], ["--source", "toy", "--target", "toy"]):
        assert config_from_args(build_parser().parse_args(argv)).preset == "toy"
    assert config_from_args(build_parser().parse_args(["--target-root", "x"])).preset == "paper"


def test_every_key_of_a_saved_config_is_honoured(tmp_path):
    config = resolve_config("authors-code", overrides={
        "mode": "source-only", "fused": True, "backbone": "resnet18", "seed": 5, "flip": True,
        "resolution": "320x160", "val_images": 3, "workers": 0, "amp": "bf16", "skip_bad": True,
        "out": str(tmp_path / "somewhere"), "lambda_adv": 0.5, "d_betas": (0.5, 0.9)})
    save_config(config, tmp_path / "config.yaml")
    assert "resolution: 320x160" in (tmp_path / "config.yaml").read_text()
    assert resolve_config(config_file=tmp_path / "config.yaml") == config


def test_unknown_keys_name_the_file(tmp_path):
    (tmp_path / "c.yaml").write_text("colour: red\n")
    with pytest.raises(ValueError, match=r"unknown key in config file .*c\.yaml: colour"):
        resolve_config(config_file=tmp_path / "c.yaml")


def test_the_resolved_config_is_printed_and_logged(toy, tmp_path, capsys):
    assert main(_args(toy, tmp_path / "run")) == 0
    err = capsys.readouterr().err
    assert "config: mode=adapt" in err and "preset=toy" in err and "resolution=128x64" in err
    log = (tmp_path / "run" / "train.log").read_text()
    assert "config: mode=adapt" in log and "iteration=1 kind=train" in log
    assert "finished at iteration 1 of 1" in log
    assert "TensorBoard is not installed" in err  # not in this venv; one line, not silence
    assert err.count("TensorBoard") == 1


# -- run directories ----------------------------------------------------------------------------
def test_a_new_run_into_a_run_directory_is_refused_unless_overwrite(toy, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_args(toy, run, "--checkpoint-every", "1", "--iterations", "2")) == 0
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != ".lock"}
    capsys.readouterr()
    assert main(_args(toy, run)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {run} already holds a run") and "--overwrite" in err
    assert len(err.splitlines()) == 1
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != ".lock"} == before
    assert main(_args(toy, run, "--overwrite")) == 0
    assert not list(run.glob("iter_*.pt"))  # the old run's checkpoints are gone
    assert run_checkpoints.read(run_checkpoints.latest(run))["iteration"] == 1


def test_resume_and_overwrite_exclude_each_other(toy, tmp_path):
    with pytest.raises(SystemExit):
        main(["--resume", str(tmp_path), "--overwrite"])


def test_a_second_concurrent_run_is_refused_naming_the_holder(toy, tmp_path, capsys):
    run = tmp_path / "busy"
    with rundir.RunLock(run):
        assert main(_args(toy, run)) == 2
        assert main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run} is in use by another run (pid {os.getpid()})" in err
    assert not (run / "config.yaml").exists()
    assert main(_args(toy, run)) == 0  # released with the holder


def test_stale_temporary_files_are_removed_at_start(toy, tmp_path):
    run = tmp_path / "run"
    assert main(_args(toy, run, "--schedule-iterations", "2")) == 0
    stale = run / ".iter_000002.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert main(["--resume", str(run), "--iterations", "2", "--quiet"]) == 0
    assert not stale.exists()
    assert "removed 1 stale temporary file" in (run / "train.log").read_text()


def test_best_is_a_hard_link_when_it_equals_last(toy, tmp_path):
    run = tmp_path / "run"
    assert main(_args(toy, run, "--val-every", "1")) == 0
    assert (run / "best.pt").stat().st_ino == (run / "last.pt").stat().st_ino
    assert run_checkpoints.read(run / "best.pt")["iteration"] == 1


def test_device_cuda_without_cuda_is_one_line(toy, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert main(_args(toy, tmp_path / "run", "--device", "cuda")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device cuda" in err and "--device cpu" in err


# -- bad images ---------------------------------------------------------------------------------
@pytest.fixture()
def broken_toy(toy, tmp_path):
    """A copy of the toy pair with one truncated target image."""
    root = tmp_path / "broken"
    shutil.copytree(toy.source.parent, root)
    image = sorted((root / "target" / "leftImg8bit" / "train").rglob("*.png"))[0]
    image.write_bytes(image.read_bytes()[:100])
    return root, image


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_bad_image_is_one_line_with_or_without_workers(broken_toy, tmp_path, capsys, workers):
    root, image = broken_toy
    argv = ["--preset", "toy", "--source-root", str(root / "source"), "--target-root",
            str(root / "target"), "--resolution", "128x64", "--batch-size", "4",
            "--iterations", "2", "--out", str(tmp_path / "run"), "--quiet",
            "--workers", workers]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and image.name in err[-1]
    assert not any("Traceback" in line or "DataLoader worker" in line for line in err)


def test_skip_bad_skips_counts_and_logs(broken_toy, tmp_path, capsys):
    root, image = broken_toy
    run = tmp_path / "run"
    argv = ["--preset", "toy", "--source-root", str(root / "source"), "--target-root",
            str(root / "target"), "--resolution", "128x64", "--batch-size", "4",
            "--iterations", "2", "--out", str(run), "--quiet", "--workers", "1", "--skip-bad"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "unreadable images skipped" in out
    log = (run / "train.log").read_text()
    assert f"skipped {image}" in log and "skipped=" in log
    assert yaml.safe_load((run / "config.yaml").read_text())["skip_bad"] is True


def test_table1_follows_the_same_rules(toy, tmp_path, capsys):
    from rtda.train import table1

    argv = ["--seeds", "0", "--out", str(tmp_path / "t"), "--iterations", "1",
            "--source-root", str(toy.source), "--target-root", str(toy.target),
            "--resolution", "128x64", "--workers", "0", "--quiet"]
    assert table1.main(argv) == 0
    stamp = (tmp_path / "t" / "adapt-fused-seed0" / "last.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert table1.main(argv) == 2
    assert "already holds table-1 runs" in capsys.readouterr().err
    assert table1.main([*argv, "--resume"]) == 0  # finished runs are read back
    assert (tmp_path / "t" / "adapt-fused-seed0" / "last.pt").stat().st_mtime_ns == stamp
    with rundir.RunLock(tmp_path / "t" / "source-only-seed0"):
        assert table1.main([*argv, "--overwrite"]) == 2
    assert f"pid {os.getpid()}" in capsys.readouterr().err
    assert table1.main([*argv, "--overwrite"]) == 0
    assert (tmp_path / "t" / "adapt-fused-seed0" / "last.pt").stat().st_mtime_ns != stamp


def test_run_files_lists_only_what_a_run_writes(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert not rundir.holds_run(tmp_path) and not rundir.holds_run(tmp_path / "missing")
    (tmp_path / "metrics.jsonl").write_text("")
    assert rundir.holds_run(tmp_path)
    assert [p.name for p in rundir.run_files(Path(tmp_path))] == ["metrics.jsonl"]


def test_table1_takes_any_pair_and_names_a_missing_root(tmp_path, capsys):
    from rtda.train import table1

    argv = ["--source", "gta5", "--target", "cityscapes", "--seeds", "0", "--out",
            str(tmp_path / "t"), "--quiet"]
    assert table1.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--source-root is required for --source gta5" in err
