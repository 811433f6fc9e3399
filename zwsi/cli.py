"""The `zwsi` console command: `zwsi --version`, `zwsi --help`, and one subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import sys

from zwsi import __version__

# Each module in zwsi/commands/ adds its subcommands with `register(subparsers)`.
COMMAND_MODULES: tuple[str, ...] = ("report", "slide", "validate", "prepare", "train", "generate", "train_vae")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zwsi",
        description="Generate synthetic whole-slide pathology images from report text (Z-Image S3-DiT).",
    )
    parser.add_argument("--version", action="version", version=f"zwsi {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"zwsi.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from zwsi.errors import run_command

    name = " ".join(str(getattr(args, k)) for k in ("command", "report_command", "slide_command", "train_command",
                                                      "train_vae_command") if getattr(args, k, None))
    return run_command(name or "zwsi", args.func, args)


if __name__ == "__main__":
    sys.exit(main())
