"""Command line: ``python -m ssmcore demo``, ``python -m ssmcore info`` and ``python -m ssmcore warmup``."""

from __future__ import annotations

import argparse
import sys


def _warmup(args: argparse.Namespace) -> int:
    from ._warmup import warmup
    from .backends.numba._jit import cache_location

    seconds = warmup(ops=args.ops, dtypes=args.dtypes, backward=not args.no_backward, verbose=not args.quiet)
    if not args.quiet:
        print(f"{'total':<24} {sum(seconds.values()):8.2f} s")
    print(f"numba cache {cache_location()}  (override with NUMBA_CACHE_DIR)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    from ._warmup import _OPS, DTYPES

    parser = argparse.ArgumentParser(prog="python -m ssmcore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="online function approximation with HiPPO: figure + error/timing table")
    demo.add_argument("--output", default="ssmcore_demo.png", help="where to save the figure (PNG)")
    demo.add_argument("--quick", action="store_true", help="smaller sizes (used by the tests)")
    sub.add_parser("info", help="versions and available backends")
    warm = sub.add_parser(
        "warmup", help="compile every op's Numba kernels into the on-disk cache (run once per image / machine)",
        description="Compile (or load) the Numba kernels of every op, forward and backward, for the common "
        "dtypes, into Numba's on-disk cache, so that first calls in later processes only load them.",
    )
    warm.add_argument("--ops", nargs="+", choices=list(_OPS), metavar="OP", help=f"ops to warm (default: all: "
                      f"{', '.join(_OPS)})")
    warm.add_argument("--dtypes", nargs="+", choices=DTYPES, metavar="DTYPE",
                      help=f"dtypes to warm (default: all of {', '.join(DTYPES)}, where an op supports them)")
    warm.add_argument("--no-backward", action="store_true", help="forward kernels only (no pullbacks)")
    warm.add_argument("--quiet", action="store_true", help="print only the cache directory")
    args = parser.parse_args(argv)
    if args.command == "info":
        from .info import main as info_main

        info_main()
    elif args.command == "warmup":
        return _warmup(args)
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
