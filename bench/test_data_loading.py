"""Smoke run of ``python -m bench.data_loading`` (its figures come from running it by hand)."""

from bench.data_loading import main


def test_data_loading_report_runs(capsys):
    argv = ["--batch-size", "2", "--batches", "1", "--workers", "1", "--step-repeats", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| gta5-size | 1914x1052 -> 1024x512 |" in out and "| toy | 512x256 -> 512x256 |" in out
