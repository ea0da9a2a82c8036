"""The ``allscaip`` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="allscaip", description="AllScAIP interatomic potential for OpenMM and LAMMPS MD.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser(
        "info", help="report versions, OpenMM platforms, LAMMPS build; check the engines load")
    info.set_defaults(handler=_run_info)
    return parser


def _run_info(args: argparse.Namespace) -> int:
    from allscaip.info import main as info_main

    return info_main(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
