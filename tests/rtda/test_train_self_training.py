"""``rtda.train --method self-training|both``: tiny end-to-end runs, the warm-up, the teacher in the
checkpoint, bitwise resume with the teacher, the mixed batch's loss, and bad values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rtda.train import run_checkpoints
from rtda.train.__main__ import main
from rtda.train.config import resolve_config
from rtda.train.run import Trainer
from rtda.train.self_training import EmaTeacher, class_pixel_counts, dataset_class_counts
from rtda.train.step import StepSettings, self_training_loss
from tests.rtda.data_trees import small_toy


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return small_toy(tmp_path_factory.mktemp("toy"), images=6, val=2)


@pytest.fixture(autouse=True)
def _class_count_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RTDA_CACHE_DIR", str(tmp_path / "cache"))


def _config(toy, out, **overrides):
    values = dict(source_root=str(toy.source), target_root=str(toy.target), resolution=(64, 128),
                  batch_size=2, iterations=4, workers=0, log_every=1, val_every=100,
                  checkpoint_every=2, out=str(out), fused=True, method="self-training")
    values.update(overrides)
    return resolve_config("toy", overrides=values)


@pytest.mark.parametrize("method", ["self-training", "both"])
def test_each_method_trains_with_its_parts(toy, tmp_path, method):
    result = Trainer(_config(toy, tmp_path / method, method=method, iterations=3, warmup=1),
                     progress=False).train()
    assert result["reason"] == "finished"
    expected = {"seg", "st", "pseudo_weight"} | ({"adv", "d"} if method == "both" else set())
    assert set(result["losses"]) == expected
    assert 0.0 <= result["losses"]["pseudo_weight"] <= 1.0
    state = run_checkpoints.read(tmp_path / method / "last.pt")
    assert "teacher" in state and ("discriminator" in state) == (method == "both")
    rows = [line for line in (tmp_path / method / "train.log").read_text().splitlines()
            if line.startswith("iteration=")]
    assert "st=" not in rows[0] and "st=" in rows[1]  # the warm-up iteration has no target loss


def test_resume_reaches_the_same_student_and_teacher(toy, tmp_path):
    Trainer(_config(toy, tmp_path / "whole", method="both"), progress=False).train()
    Trainer(_config(toy, tmp_path / "part", method="both", iterations=2, schedule_iterations=4),
            progress=False).train()
    assert main(["--resume", str(tmp_path / "part"), "--iterations", "4", "--quiet"]) == 0
    whole = run_checkpoints.read(tmp_path / "whole" / "last.pt")
    part = run_checkpoints.read(tmp_path / "part" / "last.pt")
    for key in ("model", "teacher", "discriminator"):
        assert whole[key].keys() == part[key].keys()
        assert all(torch.equal(whole[key][k], part[key][k]) for k in whole[key]), key


class _Constant(torch.nn.Module):
    """A 'segmenter' whose logits are fixed per pixel: class 1 everywhere, confident or not; like
    BiSeNet, a tuple of outputs in training mode and the main output in eval mode."""

    def __init__(self, confident: torch.Tensor) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.confident = confident

    def forward(self, image, resize=True):
        logits = torch.zeros(image.shape[0], 3, *image.shape[2:])
        logits[:, 1] = torch.where(self.confident, 10.0, 0.1) * self.scale
        return (logits,) if self.training else logits


def test_the_mixed_batch_loss_weights_source_pixels_by_one():
    confident = torch.tensor([[True, True], [False, False]])  # half the pixels confident
    student = _Constant(confident)
    teacher = EmaTeacher(student)
    source = {"image": torch.zeros(1, 3, 2, 2), "label": torch.tensor([[[0, 0], [255, 255]]])}
    target = {"image": torch.zeros(1, 3, 2, 2)}
    for fused in (False, True):  # the Constant's map is at the input size: no resize either way
        settings = StepSettings(self_training=True, class_mix=True, fused=fused)
        loss, weight = self_training_loss(student, teacher, source, target, settings,
                                          torch.Generator().manual_seed(0))
        _check_the_mixed_loss(student, source, loss, weight)


def _check_the_mixed_loss(student, source, loss, weight):
    assert weight.item() == 0.5
    logits = student(source["image"])[0]
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([[[0, 0], [1, 1]]]),
                                           reduction="none")
    # top row: pasted source pixels of class 0, weight 1; bottom row: ignored in the source, so
    # the target's pseudo-label 1 with the image's weight 0.5
    expected = (ce[0, 0].sum() + 0.5 * ce[0, 1].sum()) / 4
    torch.testing.assert_close(loss, expected)


def test_class_counts_are_read_once_and_cached(toy, tmp_path, monkeypatch):
    from rtda.data import GTA5

    dataset = GTA5(toy.source)
    counts = dataset_class_counts(dataset, cache=tmp_path / "c")
    expected = class_pixel_counts(
        (dataset.id_to_train_id[dataset.read_raw_label(s.label)] for s in dataset.samples), 19)
    assert np.array_equal(counts, expected) and counts.shape == (6, 19)
    assert len(list((tmp_path / "c").glob("*.npy"))) == 1

    def unread(path):
        raise AssertionError("a cached count was read again")

    monkeypatch.setattr(dataset, "read_raw_label", unread)
    assert np.array_equal(dataset_class_counts(dataset, cache=tmp_path / "c"), counts)


def test_rare_class_sampling_draws_by_the_weights(toy, tmp_path):
    trainer = Trainer(_config(toy, tmp_path / "rcs", iterations=1), progress=False)
    weights = trainer.source.loader.sampler.weights
    assert weights is not None and np.isclose(weights.sum(), 1.0)
    off = Trainer(_config(toy, tmp_path / "off", iterations=1, rare_class_sampling=False),
                  progress=False)
    assert off.source.loader.sampler.weights is None
    adversarial = Trainer(_config(toy, tmp_path / "adv", iterations=1, method="adversarial"),
                          progress=False)
    assert adversarial.source.loader.sampler.weights is None


def test_bad_self_training_values(toy, tmp_path):
    with pytest.raises(ValueError, match="method must be one of"):
        _config(toy, tmp_path / "x", method="mean-teacher")
    with pytest.raises(ValueError, match="ema_alpha must be in"):
        _config(toy, tmp_path / "x", ema_alpha=1.0)
    with pytest.raises(ValueError, match="pseudo_threshold must be in"):
        _config(toy, tmp_path / "x", pseudo_threshold=-0.1)
    with pytest.raises(ValueError, match="warmup must be >= 0"):
        _config(toy, tmp_path / "x", warmup=-1)
    with pytest.raises(ValueError, match="rcs_temperature must be > 0"):
        _config(toy, tmp_path / "x", rcs_temperature=0.0)


_WORKER = """
import json, sys, torch.distributed as dist
from rtda.train.config import resolve_config
from rtda.train.run import Trainer
trainer = Trainer(resolve_config("toy", overrides=json.loads(sys.argv[1])), progress=False)
trainer.train()
sums = {k: float(v.double().sum()) for k, v in trainer.teacher.state_dict().items()}
sums["student"] = float(sum(p.double().sum() for p in trainer.segmenter.parameters()))
gathered = [None] * dist.get_world_size()
dist.all_gather_object(gathered, sums)
if dist.get_rank() == 0:
    json.dump(gathered, open(sys.argv[2], "w"))
dist.destroy_process_group()
"""


def test_two_gloo_processes_keep_one_teacher(toy, tmp_path):
    """Each rank's BatchNorm statistics see its own half batch; the teachers must still agree
    bitwise, weights and statistics, after every update."""
    overrides = dict(source_root=str(toy.source), target_root=str(toy.target),
                     resolution=[64, 128], batch_size=4, iterations=2, workers=0, log_every=1,
                     val_every=100, checkpoint_every=100, fused=True, method="both",
                     out=str(tmp_path / "two"))
    (tmp_path / "worker.py").write_text(_WORKER)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "worker.py", json.dumps(overrides), str(tmp_path / "sums.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = json.loads((tmp_path / "sums.json").read_text())
    assert rank0 == rank1 and len(rank0) > 100


def test_fused_and_plain_self_training_losses_agree_on_bisenet():
    """The step's fused path (1/8 outputs, rtda_kernels.pseudo_label_loss) and its plain path
    (outputs at the input size, the reference) give the same loss, weight and gradients."""
    from rtda.models import build_segmenter

    torch.manual_seed(0)
    student = build_segmenter("resnet18", 19, None)
    teacher = EmaTeacher(student)
    with torch.no_grad():  # an untrained teacher is sure of nothing: sharpen its logits
        teacher.model.classifier.weight.mul_(200.0)
    source = {"image": torch.randn(2, 3, 64, 128), "label": torch.randint(0, 19, (2, 64, 128))}
    target = {"image": torch.randn(2, 3, 64, 128)}
    results = []
    for fused in (False, True):
        student.zero_grad()
        settings = StepSettings(self_training=True, fused=fused, pseudo_threshold=0.5)
        loss, weight = self_training_loss(student, teacher, source, target, settings,
                                          torch.Generator().manual_seed(3))
        loss.backward()
        results.append((loss.detach(), weight, [p.grad.clone() for p in student.parameters()
                                                if p.grad is not None]))
    (plain_loss, plain_weight, plain_grads), (fused_loss, fused_weight, fused_grads) = results
    assert 0.0 < plain_weight.item() < 1.0
    torch.testing.assert_close(fused_loss, plain_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(fused_weight, plain_weight, rtol=0, atol=1e-6)
    assert len(fused_grads) == len(plain_grads)
    for fused_grad, plain_grad in zip(fused_grads, plain_grads):
        torch.testing.assert_close(fused_grad, plain_grad, rtol=1e-3, atol=1e-6)


def test_fused_and_plain_training_stay_together(toy, tmp_path):
    """A few iterations of self-training, fused and not, from one seed: the same losses and
    nearly the same weights (only the summation order differs; measured 3e-4 at most after 3
    iterations)."""
    runs = {}
    for fused in (False, True):
        out = tmp_path / f"fused-{fused}"
        runs[fused] = Trainer(_config(toy, out, fused=fused, iterations=3), progress=False).train()
        runs[fused]["state"] = run_checkpoints.read(out / "last.pt")
    for name in ("seg", "st", "pseudo_weight"):
        assert runs[True]["losses"][name] == pytest.approx(runs[False]["losses"][name], rel=1e-4,
                                                           abs=1e-6), name
    for key in ("model", "teacher"):
        fused, plain = runs[True]["state"][key], runs[False]["state"][key]
        for k in plain:
            if plain[k].is_floating_point():
                torch.testing.assert_close(fused[k], plain[k], rtol=0, atol=2e-3, msg=k)


def test_self_training_with_amp_runs_and_resumes(toy, tmp_path):
    out = tmp_path / "amp"
    result = Trainer(_config(toy, out, amp="bf16", iterations=2), progress=False).train()
    assert result["reason"] == "finished"
    assert all(np.isfinite(v) for v in result["losses"].values())
    assert run_checkpoints.read(out / "last.pt")["iteration"] == 2
