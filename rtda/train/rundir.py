"""Run directories: one run per directory, one process writing it at a time.

A directory *holds a run* once it has a config, metrics or a checkpoint. A new run into it is
refused unless the caller resumes it or asked to overwrite it (then the run's files are removed,
nothing else). While a run writes, ``.lock`` in the directory is held with ``fcntl.flock`` and
names the holder's pid; the lock goes with the process, so a killed run leaves nothing to clean.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

LOCK = ".lock"
#: what a run writes; --overwrite removes exactly these
RUN_FILES = ("config.yaml", "metrics.jsonl", "metrics.csv", "train.log", "last.pt", "best.pt",
             "iter_*.pt", ".*.pt.*.tmp")
RUN_DIRS = ("tensorboard",)


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (a one-line message for the user)."""


def run_files(out: Path) -> list[Path]:
    """The files and folders of a run in ``out`` (empty when it holds none)."""
    found = [p for pattern in RUN_FILES for p in sorted(out.glob(pattern))]
    return found + [out / d for d in RUN_DIRS if (out / d).is_dir()]


def holds_run(out: str | Path) -> bool:
    out = Path(out)
    return any(p.name != "train.log" for p in run_files(out)) if out.is_dir() else False


class RunLock:
    """An exclusive lock on a run directory, held until :meth:`release` (or the process ends)."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / LOCK
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(self._fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise RunDirError(f"{self.out} is in use by another run (pid {holder}); wait for "
                              f"it to end or choose another --out") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim(out: str | Path, *, resume: bool = False, overwrite: bool = False) -> RunLock:
    """Locks ``out`` for a run; a new run into a directory holding one needs ``overwrite``."""
    lock = RunLock(out)
    out = Path(out)
    if not resume and holds_run(out):
        if not overwrite:
            lock.release()
            names = ", ".join(p.name for p in run_files(out)[:4])
            raise RunDirError(f"{out} already holds a run ({names}); continue it with --resume "
                              f"{out}, replace it with --overwrite, or choose another --out")
        for path in run_files(out):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return lock


__all__ = ["RunDirError", "RunLock", "claim", "holds_run", "run_files"]
