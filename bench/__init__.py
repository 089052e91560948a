"""Benchmarks of rtda_kernels and rtda: pytest-benchmark suites (``pytest bench``), rendered by
``python -m bench.report``, sharing the workloads in ``bench.subjects``."""
