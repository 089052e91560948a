"""fuse_dwsep on a small MobileNet-style model: outputs, BatchNorm folding, train/eval, the report,
state_dict round trips both ways, ReLU6, and the runs it must skip."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from rtda_kernels.nn import FusedSeparableConv2d, fuse_dwsep, fuse_modules


def _bn(c):
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
    return bn


def _separable(cin, cout, stride, act):  # Xception-style: dw, BN, pw, BN, act
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), _bn(cin),
        nn.Conv2d(cin, cout, 1, bias=False), _bn(cout), act,
    )


def _mobilenet():
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), _bn(8), nn.ReLU6()),
        _separable(8, 16, 1, nn.ReLU6()),  # 1: convs fused, ReLU6 kept
        _separable(16, 16, 2, nn.ReLU()),  # 2: all fused
        nn.Sequential(nn.Conv2d(16, 16, 3, padding="same", groups=16), nn.Conv2d(16, 24, 1),
                      nn.LeakyReLU(0.1)),  # 3: no BN
        nn.Sequential(nn.Conv2d(24, 24, 3, 1, 1, groups=24, bias=False), _bn(24), nn.ReLU(),
                      nn.Conv2d(24, 24, 1, bias=False), _bn(24), nn.ReLU()),  # 4: MobileNet v1
        nn.Sequential(nn.Conv2d(24, 24, 3, 1, 2, dilation=2, groups=24), nn.Conv2d(24, 8, 1)),  # 5
        nn.Conv2d(8, 5, 1),
    )


X = torch.randn(2, 3, 23, 19)


def test_eval_fuse_matches_plain_and_reports():
    model = _mobilenet().eval()
    expected = model(X)
    report = fuse_dwsep(model)
    assert report.model is model
    assert [e.modules for e in report.fused] == [
        ("1.0", "1.1", "1.2", "1.3"), ("2.0", "2.1", "2.2", "2.3", "2.4"), ("3.0", "3.1", "3.2")]
    assert "activation ReLU6 not supported by dwsep_conv2d" in report.fused[0].detail
    assert report.fused[1].detail == report.fused[2].detail == ""
    assert isinstance(model[1][4], nn.ReLU6) and isinstance(model[1][0], FusedSeparableConv2d)
    assert [e.modules[0] for e in report.skipped] == ["4.0", "5.0"]
    assert "between the depthwise and the pointwise" in report.skipped[0].detail
    assert "dilation" in report.skipped[1].detail
    assert "2 fused" not in str(report) and "3 fused, 2 skipped" in str(report)
    torch.testing.assert_close(model(X), expected, rtol=1e-5, atol=1e-5)


def test_fused_op_runs_in_eval_only(monkeypatch):
    import rtda_kernels.nn.fusion as fusion

    calls = []
    real = fusion.dwsep_conv2d
    monkeypatch.setattr(fusion, "dwsep_conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = _mobilenet().eval()
    plain = copy.deepcopy(model)
    fuse_dwsep(model)
    model(X)
    assert len(calls) == 3
    calls.clear()
    model.train(), plain.train()  # BN runs go back to the unfused modules: batch statistics
    torch.testing.assert_close(model(X), plain(X), rtol=1e-5, atol=1e-5)
    assert len(calls) == 1  # only the run without BatchNorm
    torch.testing.assert_close(model.state_dict(), plain.state_dict())  # running stats updated alike
    model.eval(), plain.eval()
    torch.testing.assert_close(model(X), plain(X), rtol=1e-5, atol=1e-5)


def test_train_mode_skips_batchnorm_runs():
    model = _mobilenet().train()
    report = fuse_dwsep(model)
    assert [e.modules for e in report.fused] == [("3.0", "3.1", "3.2")]
    reasons = {e.modules[0]: e.detail for e in report.skipped}
    assert "training mode" in reasons["1.0"] and "training mode" in reasons["2.0"]
    model(X).sum().backward()


def test_state_dict_round_trips_both_ways():
    plain = _mobilenet().eval()
    fused = _mobilenet().eval()
    fuse_dwsep(fused)
    assert list(fused.state_dict()) == list(plain.state_dict())
    fused.load_state_dict(plain.state_dict(), strict=True)  # plain checkpoint -> fused model
    torch.testing.assert_close(fused(X), plain(X), rtol=1e-5, atol=1e-5)
    other = _mobilenet().eval()
    other.load_state_dict(fused.state_dict(), strict=True)  # fused checkpoint -> plain model
    torch.testing.assert_close(other(X), plain(X), rtol=1e-5, atol=1e-5)
    restored = torch.load(io.BytesIO(_saved(fused)), weights_only=False)  # pickles with its hooks
    assert list(restored.state_dict()) == list(plain.state_dict())
    assert list(copy.deepcopy(fused).state_dict()) == list(plain.state_dict())


def _saved(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    return buffer.getvalue()


def test_second_call_and_alias():
    model = _mobilenet().eval()
    fuse_dwsep(model)
    again = fuse_dwsep(model)
    assert again.fused == [] and len(again.skipped) == 2
    with pytest.warns(DeprecationWarning, match="fuse_dwsep"):
        assert fuse_modules(_mobilenet()) is not None


def _conv(*args, **kwargs):
    return nn.Conv2d(*args, **kwargs)


@pytest.mark.parametrize(
    "layers, reason",
    [
        ([_conv(4, 4, (3, 5), padding=(1, 2), groups=4), _conv(4, 6, 1)], "not square"),
        ([_conv(4, 4, 3, stride=(1, 2), groups=4), _conv(4, 6, 1)], "stride"),
        ([_conv(4, 4, 3, padding=(1, 0), groups=4), _conv(4, 6, 1)], "padding (1, 0)"),
        ([_conv(4, 4, 3, padding=3, groups=4), _conv(4, 6, 1)], "padding 3 >= kernel"),
        ([_conv(4, 4, 4, padding="same", groups=4), _conv(4, 6, 1)], "even kernel"),
        ([_conv(4, 4, 3, padding=1, padding_mode="reflect", groups=4), _conv(4, 6, 1)], "zeros"),
        ([_conv(4, 8, 3, groups=4), _conv(8, 6, 1)], "multiplier 2"),
        ([_conv(4, 4, 3, groups=4), _conv(4, 6, 1, stride=2)], "pointwise stride"),
        ([_conv(4, 4, 3, groups=4), _conv(4, 6, 1, groups=2)], "groups=2"),
        ([_conv(4, 4, 3, groups=4), nn.BatchNorm2d(4, track_running_stats=False), _conv(4, 6, 1)],
         "running statistics"),
        ([_conv(4, 4, 3, groups=4), nn.Hardswish(), _conv(4, 6, 1)], "Hardswish between"),
    ],
)
def test_unfusable_runs_are_skipped_with_reasons(layers, reason):
    model = nn.Sequential(*layers).eval()
    x = torch.randn(1, 4, 11, 13)
    expected = model(x)
    report = fuse_dwsep(model)
    assert report.fused == [] and len(report.skipped) == 1
    assert reason in report.skipped[0].detail
    assert not any(isinstance(m, FusedSeparableConv2d) for m in model.modules())
    torch.testing.assert_close(model(x), expected)
