"""Command line: ``python -m ssmcore demo`` and ``python -m ssmcore info``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m ssmcore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="online function approximation with HiPPO: figure + error/timing table")
    demo.add_argument("--output", default="ssmcore_demo.png", help="where to save the figure (PNG)")
    demo.add_argument("--quick", action="store_true", help="smaller sizes (used by the tests)")
    sub.add_parser("info", help="versions and available backends")
    args = parser.parse_args(argv)
    if args.command == "info":
        from .info import main as info_main

        info_main()
    else:
        from .demo import require_matplotlib, run_demo

        try:
            require_matplotlib()
        except ImportError as exc:
            print(f"python -m ssmcore demo: {exc}", file=sys.stderr)
            return 1
        run_demo(output=args.output, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
