"""Checkpoints you can trust: the payload checksum (verified by resume, evaluate, infer and
export), the newest intact checkpoint on resume, a full disk, and one line for every unusable
file (empty, YAML, a pickled module, a wrong shape, non-finite weights, a bare discriminator)."""

from __future__ import annotations

import errno
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rtda import evaluate, export, infer
from rtda.checkpoint_io import CheckpointError, load_segmenter, read_checkpoint, save_atomic
from rtda.data.images import read_rgb
from rtda.models import build_discriminator
from rtda.runtime import Segmenter
from rtda.train import run_checkpoints
from rtda.train.__main__ import main as train
from tests.rtda.data_trees import small_toy, untrained_checkpoint

RESOLUTION = [32, 64]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return small_toy(tmp_path_factory.mktemp("toy"), images=4, val=1)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return untrained_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", RESOLUTION)


def _flip_a_bit(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x10  # inside a tensor's bytes (torch.save does not compress)
    path.write_bytes(bytes(data))


def _train_args(toy, out, *extra):
    return ["--preset", "toy", "--source-root", str(toy.source), "--target-root",
            str(toy.target), "--resolution", "128x64", "--batch-size", "2", "--workers", "0",
            "--val-every", "100", "--checkpoint-every", "1", "--iterations", "2", "--out",
            str(out), "--quiet", *extra]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and not any("Traceback" in e for e in err)
    return err[-1]


# -- the checksum ---------------------------------------------------------------------------------
def test_every_checkpoint_carries_a_checksum_that_catches_a_flipped_bit(model_file, tmp_path):
    raw = torch.load(model_file, weights_only=True)
    assert len(raw["sha256"]) == 64
    assert "sha256" not in read_checkpoint(model_file)  # verified, then dropped
    copy = tmp_path / "copy.pt"
    copy.write_bytes(model_file.read_bytes())
    _flip_a_bit(copy)
    with pytest.raises(CheckpointError, match=r"copy\.pt is corrupt: its contents do not match"):
        read_checkpoint(copy)


@pytest.mark.parametrize("tool", ["evaluate", "infer", "export"])
def test_evaluate_infer_and_export_refuse_a_corrupt_checkpoint(tool, model_file, toy, tmp_path,
                                                               capsys):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(model_file.read_bytes())
    _flip_a_bit(corrupt)
    argv = {"evaluate": lambda: evaluate.main(["--checkpoint", str(corrupt), "--root",
                                               str(toy.target), "--workers", "0", "--quiet"]),
            "infer": lambda: infer.main(["--checkpoint", str(corrupt), "--input",
                                         str(toy.target), "--recursive", "--output",
                                         str(tmp_path / "out"), "--quiet"]),
            "export": lambda: export.main(["--checkpoint", str(corrupt), "--no-check",
                                           "--output", str(tmp_path / "m.onnx")])}
    assert argv[tool]() == 2
    assert f"{corrupt} is corrupt" in _one_error_line(capsys)


def test_resume_refuses_a_corrupt_newest_checkpoint_and_offers_the_intact_one(toy, tmp_path,
                                                                             capsys):
    run = tmp_path / "run"
    assert train(_train_args(toy, run, "--schedule-iterations", "3")) == 0
    assert (run / "last.pt").stat().st_ino == (run / "iter_000002.pt").stat().st_ino  # one copy
    _flip_a_bit(run / "last.pt")  # both names of iteration 2
    capsys.readouterr()
    assert train(["--resume", str(run), "--iterations", "3", "--quiet"]) == 2
    line = _one_error_line(capsys)
    assert "last.pt is corrupt" in line or "iter_000002.pt is corrupt" in line
    assert "the newest intact one is iter_000001.pt (iteration 1)" in line
    assert "--resume-intact" in line
    assert train(["--resume", str(run), "--resume-intact", "--iterations", "3", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "from iter_000001.pt (iteration 1)" in err and "skipped" in err
    assert run_checkpoints.read(run / "last.pt")["iteration"] == 3


def test_no_intact_checkpoint_left(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty.*no intact checkpoint is left"):
        run_checkpoints.latest(tmp_path)


# -- a full disk ----------------------------------------------------------------------------------
def _full_disk(monkeypatch, after: int = 1000):
    """torch.save that fails like a full disk after ``after`` bytes."""
    real = torch.save

    def save(obj, file, *args, **kwargs):
        buffer = io.BytesIO()
        real(obj, buffer, *args, **kwargs)
        file.write(buffer.getvalue()[:after])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_names_the_path_and_the_bytes_and_keeps_the_old_file(model_file, tmp_path,
                                                                        monkeypatch):
    target = tmp_path / "model.pt"
    target.write_bytes(model_file.read_bytes())
    _full_disk(monkeypatch)
    with pytest.raises(CheckpointError) as info:
        save_atomic(read_checkpoint(target), target)
    message = str(info.value)
    assert message.startswith(f"no space left on the device writing {target}: it needs about ")
    needed = sum(t.numel() * t.element_size() for t in read_checkpoint(model_file)["model"].values())
    assert f"{needed:,} bytes" in message and "\n" not in message
    assert target.read_bytes() == model_file.read_bytes()  # the previous one, untouched
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_full_disk_during_training_is_one_line_and_exit_2(toy, tmp_path, monkeypatch, capsys):
    _full_disk(monkeypatch)
    assert train(_train_args(toy, tmp_path / "run")) == 2
    line = _one_error_line(capsys)
    assert "no space left on the device writing" in line and "iter_000001.pt" in line


# -- one line for every unusable file -------------------------------------------------------------
def test_unusable_files_get_one_line_naming_them(model_file, tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    yaml_file = tmp_path / "config.yaml"
    yaml_file.write_text("preset: toy\nsource: toy\n")
    pickled = tmp_path / "module.pt"
    torch.save(torch.nn.Conv2d(1, 1, 1), pickled)
    cases = {empty: "is empty (0 bytes)", yaml_file: "is not a PyTorch checkpoint",
             pickled: "holds Python objects other than tensors"}
    for path, expected in cases.items():
        with pytest.raises(CheckpointError) as info:
            load_segmenter(path)
        assert str(info.value).startswith(str(path)) and expected in str(info.value)
        assert "\n" not in str(info.value)


def test_a_wrong_classifier_shape_is_named(model_file, tmp_path):
    state = read_checkpoint(model_file)["model"]
    state["classifier.weight"] = torch.zeros(19, 7, 1, 1)
    save_atomic(state, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match=r"classifier\.weight has shape \(19, 7, 1, 1\), but "
                                              r"BiSeNet resnet18 with 19 classes needs"):
        load_segmenter(tmp_path / "wrong.pt")


def test_non_finite_weights_are_refused_naming_the_tensor(model_file, toy, tmp_path, capsys):
    data = read_checkpoint(model_file)
    data["model"]["context_path.layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    save_atomic(data, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"layer2\.0\.conv1\.weight holds 1 non-finite"):
        Segmenter(tmp_path / "nan.pt")
    assert infer.main(["--checkpoint", str(tmp_path / "nan.pt"), "--input", str(toy.target),
                       "--recursive", "--output", str(tmp_path / "out"), "--quiet"]) == 2
    assert "non-finite" in _one_error_line(capsys)


def test_a_bare_discriminator_state_dict_to_export(tmp_path, capsys):
    save_atomic(build_discriminator("fcd_light_thin", 19).state_dict(), tmp_path / "d.pt")
    assert export.main(["--checkpoint", str(tmp_path / "d.pt"), "--model", "discriminator",
                        "--no-check", "--output", str(tmp_path / "d.onnx")]) == 2
    line = _one_error_line(capsys)
    assert "is a bare state_dict, not a training checkpoint" in line and "adapt run" in line


def test_export_without_onnxscript_is_one_line(model_file, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real(name, *a))
    assert export.main(["--checkpoint", str(model_file), "--no-check"]) == 2
    assert "pip install 'rtda[export]'" in _one_error_line(capsys)


# -- devices and images ---------------------------------------------------------------------------
def test_cuda_on_a_cpu_build_is_one_line(model_file, toy, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ValueError, match="--device cuda asked for a GPU.*use --device cpu"):
        Segmenter(model_file, device="cuda")
    assert infer.main(["--checkpoint", str(model_file), "--input", str(toy.target), "--recursive",
                       "--output", str(tmp_path / "out"), "--device", "cuda", "--quiet"]) == 2
    assert "--device cpu" in _one_error_line(capsys)
    assert evaluate.main(["--checkpoint", str(model_file), "--root", str(toy.target),
                          "--device", "cuda:3", "--quiet"]) == 2
    assert "--device cpu" in _one_error_line(capsys)


def test_empty_images_are_refused_before_the_model_runs(model_file):
    segmenter = Segmenter(model_file)
    with pytest.raises(ValueError, match=r"images\[0\] is empty \(5x0 pixels\)"):
        segmenter.predict(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="non-empty N x 3 x H x W"):
        segmenter.predict(torch.zeros(1, 3, 0, 7, dtype=torch.uint8))


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "LA", "RGBA", "CMYK", "P", "1"])
def test_every_pillow_mode_reads_as_8_bit_rgb(tmp_path, mode):
    grey = (np.arange(24 * 32).reshape(24, 32) % 256).astype(np.uint8)
    if mode == "I;16":
        image = Image.fromarray(grey.astype(np.uint16) * 257)
    elif mode == "I":
        image = Image.fromarray(grey.astype(np.int32) * 257)
    elif mode == "F":
        image = Image.fromarray(grey.astype(np.float32) / 255)
    else:
        image = Image.fromarray(grey).convert(mode)
    assert image.mode == mode
    path = tmp_path / ("x.tif" if mode in ("I", "F", "CMYK") else "x.png")
    image.save(path)
    rgb = np.asarray(read_rgb(path))
    assert rgb.dtype == np.uint8 and rgb.shape == (24, 32, 3)
    if mode in ("I;16", "I", "F"):  # Pillow's own convert("RGB") clips these to white
        assert np.abs(rgb.astype(int) - grey[..., None]).max() <= 1
    else:
        assert np.array_equal(rgb, np.asarray(Image.open(path).convert("RGB")))
