"""The ``fastunlearn`` command."""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fastunlearn", description="Fused gradient algebra for machine unlearning.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("showcase", help="run the ops on a synthetic gradient, next to the code they replace")
    commands.add_parser("backends", help="list the backends and whether each can run here")
    demo = commands.add_parser("demo", help="unlearning on bundled digits with every method, evaluated and reported")
    demo.add_argument("--quick", action="store_true", help="the short preset (one forget set, fewer epochs)")
    demo.add_argument("--out", default="fastunlearn-demo", help="output directory (default: %(default)s)")
    demo.add_argument("--methods", nargs="+", metavar="NAME", help="methods to run (default: all)")
    demo.add_argument(
        "--forget", action="append", metavar="SPEC", help="class:N or random:F; repeat for several (default: preset's)"
    )
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "showcase":
        from fastunlearn import showcase

        showcase.main()
    elif args.command == "demo":
        from pathlib import Path

        from fastunlearn.demo import DemoConfig, run_demo
        from fastunlearn.demo.recipes import RECIPES

        try:
            config = DemoConfig(
                preset="quick" if args.quick else "full", out=Path(args.out), methods=args.methods or list(RECIPES),
                forgets=args.forget, seed=args.seed,
            )  # fmt: skip
        except ValueError as exc:
            parser.error(str(exc))
        run_demo(config)
    elif args.command == "backends":
        import fastunlearn

        print(json.dumps(fastunlearn.backends(), indent=2))


if __name__ == "__main__":
    main()
