"""``python -m rtda.infer``: folders with a corrupt image, globs, single files, video, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rtda import infer
from rtda.data.labels import TRAIN_ID_TO_LABEL_ID, colorize
from rtda.models import build_segmenter
from rtda.runtime import Segmenter
from tests.rtda.data_trees import untrained_checkpoint

RESOLUTION = [32, 64]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", RESOLUTION)


def _images(folder, sizes, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i, (h, w) in enumerate(sizes):
        arrays[f"img{i}"] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arrays[f"img{i}"]).save(folder / f"img{i}.png")
    return arrays


def test_folder_with_a_corrupt_image(tmp_path, checkpoint, capsys):
    arrays = _images(tmp_path / "in", [(40, 70), (33, 51), (64, 64)])
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    code = infer.main(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "in"),
                       "--output", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0
    assert "broken.jpg" in captured.err and "cannot decode" in captured.err
    assert "wrote 3 predictions" in captured.out and "(1 skipped)" in captured.out
    assert "frames/s segmenting" in captured.out
    segmenter = Segmenter(checkpoint)
    for name, rgb in arrays.items():
        train_ids = np.asarray(Image.open(out / "trainIds" / f"{name}.png"))
        assert train_ids.shape == rgb.shape[:2]
        assert np.array_equal(train_ids, segmenter.predict(rgb))
        label_ids = np.asarray(Image.open(out / "labelIds" / f"{name}.png"))
        assert np.array_equal(label_ids, np.asarray(TRAIN_ID_TO_LABEL_ID)[train_ids])
        blended = np.asarray(Image.open(out / "overlay" / f"{name}.png")).astype(int)
        expected = (0.5 * rgb + 0.5 * colorize(train_ids)).round()
        assert np.abs(blended - expected).max() <= 1
    assert not (out / "trainIds" / "broken.png").exists()


def test_glob_single_file_and_recursive_folder(tmp_path, checkpoint, capsys):
    _images(tmp_path / "in" / "a", [(32, 64)])
    _images(tmp_path / "in" / "b", [(32, 64), (20, 30)], seed=1)
    out = tmp_path / "out"
    args = ["--checkpoint", str(checkpoint), "--output", str(out), "--quiet"]
    assert infer.main([*args, "--input", str(tmp_path / "in" / "**" / "*.png")]) == 0
    names = sorted(p.relative_to(out / "trainIds").as_posix()
                   for p in (out / "trainIds").rglob("*.png"))
    assert names == ["a/img0.png", "b/img0.png", "b/img1.png"]
    assert infer.main([*args, "--input", str(tmp_path / "in" / "a" / "img0.png"),
                       "--output", str(tmp_path / "one")]) == 0
    assert (tmp_path / "one" / "overlay" / "img0.png").is_file()
    assert infer.main([*args, "--input", str(tmp_path / "in")]) == 2
    err = capsys.readouterr().err
    assert "holds no image" in err and "try --recursive" in err
    assert infer.main([*args, "--input", str(tmp_path / "in"), "--recursive",
                       "--output", str(tmp_path / "rec")]) == 0
    assert len(list((tmp_path / "rec" / "labelIds").rglob("*.png"))) == 3


def test_video(tmp_path, checkpoint, capsys):
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(3):
        writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.release()
    out = tmp_path / "out"
    assert infer.main(["--checkpoint", str(checkpoint), "--input", str(path), "--output",
                       str(out), "--quiet"]) == 0
    assert "wrote 3 predictions" in capsys.readouterr().out
    frames = sorted(p.name for p in (out / "trainIds" / "clip").glob("*.png"))
    assert frames == ["000001.png", "000002.png", "000003.png"]
    capture = cv2.VideoCapture(str(out / "overlay" / "clip.mp4"))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    capture.release()


def test_bad_input(tmp_path, checkpoint, capsys):
    base = ["--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"), "--quiet"]
    (tmp_path / "empty").mkdir()
    cases = [
        (["--input", str(tmp_path / "missing")], "no such file or folder"),
        (["--input", str(tmp_path / "empty")], "holds no image"),
        (["--input", str(tmp_path / "*.png")], "matches no file"),
        (["--input", str(tmp_path / "missing.mp4")], "no such file"),
    ]
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"nope")
    cases.append((["--input", str(only_bad)], "no image could be read"))
    for extra, message in cases:
        assert infer.main([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err
    _images(tmp_path / "in", [(32, 64)])
    other = tmp_path / "seven.pt"
    torch.save(build_segmenter("resnet18", num_classes=7).state_dict(), other)
    assert infer.main(["--checkpoint", str(other), "--input", str(tmp_path / "in"),
                       "--output", str(tmp_path / "o"), "--quiet"]) == 2
    assert "predicts 7 classes, expected 19" in capsys.readouterr().err
    torch.save({"weight": torch.zeros(3)}, tmp_path / "foreign.pt")
    assert infer.main(["--checkpoint", str(tmp_path / "foreign.pt"), "--input",
                       str(tmp_path / "in"), "--quiet"]) == 2
    assert "not a BiSeNet" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        infer.main([*base, "--input", str(tmp_path / "in"), "--alpha", "2"])


def test_resolution_flag(tmp_path, checkpoint, capsys):
    """--resolution WxH overrides the checkpoint's; one that is not a multiple of 32 is a
    one-line usage error."""
    arrays = _images(tmp_path / "in", [(40, 70)])
    out = tmp_path / "out"
    assert infer.main(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "in"),
                       "--output", str(out), "--resolution", "64x32", "--quiet"]) == 0
    expected = Segmenter(checkpoint, resolution=(32, 64)).predict(arrays["img0"])
    assert np.array_equal(np.asarray(Image.open(out / "trainIds" / "img0.png")), expected)
    with pytest.raises(SystemExit) as exit_info:
        infer.main(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "in"),
                    "--output", str(out), "--resolution", "70x32"])
    assert exit_info.value.code == 2 and "--resolution" in capsys.readouterr().err
