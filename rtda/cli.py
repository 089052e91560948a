"""What every command-line tool shares: ``--version``, with the versions a bug report needs."""

from __future__ import annotations

import argparse

import torch

import rtda


def add_version(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds ``--version``: rtda's version and the torch it runs on."""
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s (rtda {rtda.__version__}, torch {torch.__version__})")
    return parser


__all__ = ["add_version"]
