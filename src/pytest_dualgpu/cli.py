"""The ``dualgpu`` command (also ``python -m pytest_dualgpu``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dualgpu",
        description="Measure PyTorch models running concurrently on one device.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = commands.add_parser("info", help="Show the device dualgpu would measure on")
    info.add_argument("--device", default="auto", help="Device to describe (auto, cpu, cuda, cuda:N)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command == "info":
        return _info(arguments.device)
    parser.print_help()
    return 0


def _info(spec: str) -> int:
    import torch

    from .devices import device_name, resolve_device
    from .errors import DualGpuUsageError

    try:
        device = resolve_device(spec)
    except DualGpuUsageError as error:
        print(f"dualgpu: error: {error}")
        return 2
    print(f"device: {device} ({device_name(device)})")
    print(f"torch: {torch.__version__}, CUDA {torch.version.cuda or 'not built'}")
    print(f"intra-op threads: {torch.get_num_threads()}")
    return 0
