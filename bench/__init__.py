"""Benchmarks of rtda_kernels: pytest-benchmark suites (``pytest bench``) and a one-process
side-by-side summary (``python -m bench.summary``), sharing the workloads in ``bench.subjects``."""
