"""Building blocks of the command line that its commands share (cli.py, train.py's train,
eval and predict): the one-line usage error, the parser and help formatter, the argument
types with ranges, and the backend switches without a GPU. Apart from cli.py so that the
commands' modules import it without importing cli (which imports them)."""
from __future__ import annotations

import argparse
import os

from convgpu.core.env import gpu_count


class UsageError(Exception):
    """A command-line mistake found after parsing: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (the usage is one --help away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, except where there is none to show (None, a flag's False) or the
    help already says it."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _prepare_backends(emulate_cuda: bool = False) -> int:
    """Without a GPU: the Numba simulator, and (for info and check) the CUDA C host emulation."""
    n = gpu_count()
    if n == 0 and "NUMBA_ENABLE_CUDASIM" not in os.environ:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    if n == 0 and emulate_cuda and "CONVGPU_CUDA_HOST" not in os.environ:
        os.environ["CONVGPU_CUDA_HOST"] = "1"
    return n


def _int_at_least(lo):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {text!r}")
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {v}")
        return v
    parse.__name__ = f"integer >= {lo}"
    return parse


def _float_in(lo, hi, lo_open=False, hi_open=False):
    what = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"

    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number in {what}, got {text!r}")
        if not (v > lo if lo_open else v >= lo) or not (v < hi if hi_open else v <= hi):
            raise argparse.ArgumentTypeError(f"must be a number in {what}, got {text}")
        return v
    parse.__name__ = f"number in {what}"
    return parse
