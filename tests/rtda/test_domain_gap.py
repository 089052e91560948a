"""The toy pair's domain gap is real: a small segmenter trained on the source scores clearly lower
on the target val split than the same segmenter trained on the target train split."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rtda.data import GTA5, Cityscapes, SegmentationTransform, collate
from rtda.data.toy import ToyConfig, generate_toy
from rtda.metrics import ConfusionMatrix


def _tiny_segmenter() -> nn.Module:
    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(3, 24, 2), *block(24, 48, 2), *block(48, 48, 1),
                         *block(48, 48, 1), nn.Conv2d(48, 19, 1))


def _train_and_score(train_set, val_set, steps: int = 150) -> float:
    torch.manual_seed(0)
    model = _tiny_segmenter()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(train_set, batch_size=8, shuffle=True, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(0), drop_last=True)
    step = 0
    while step < steps:
        for batch in loader:
            logits = F.interpolate(model(batch["image"]), size=batch["label"].shape[-2:],
                                   mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, batch["label"], ignore_index=255)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
    model.eval()
    confusion = ConfusionMatrix()
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(val_set, batch_size=16, collate_fn=collate):
            logits = F.interpolate(model(batch["image"]), size=batch["label"].shape[-2:],
                                   mode="bilinear", align_corners=False)
            confusion.update(logits.argmax(1), batch["label"])
    return confusion.scores().miou


def test_source_only_loses_clearly_to_target_only(tmp_path):
    config = ToyConfig(seed=0, num_source=64, num_target=64, num_val=24, height=64, width=128)
    paths = generate_toy(tmp_path / "toy", config, workers=1, progress=False)
    transform = SegmentationTransform(size=None)
    source = GTA5(paths.source, transform=transform)
    target = Cityscapes(paths.target, "train", transform=transform)
    val = Cityscapes(paths.target, "val", transform=transform)
    source_only = _train_and_score(source, val)
    target_only = _train_and_score(target, val)
    print(f"toy target val mIoU: source-only {100 * source_only:.1f}, "
          f"target-only {100 * target_only:.1f}")
    assert target_only > source_only + 0.08
