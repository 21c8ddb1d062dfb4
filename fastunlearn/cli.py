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
    _add_profile_parser(commands)
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
    elif args.command == "profile":
        from fastunlearn import profile

        try:
            profile.main(args)
        except (ValueError, TypeError, ImportError) as exc:
            parser.error(str(exc))
    elif args.command == "backends":
        import fastunlearn

        print(json.dumps(fastunlearn.backends(), indent=2))


def _add_profile_parser(commands) -> None:
    from fastunlearn.profile import SIZES

    profile = commands.add_parser("profile", help="time and memory per phase of unlearning steps on a model")
    profile.add_argument(
        "--model", default="transformer", help="'transformer' (built in) or package.module:factory returning a "
        "fastunlearn.profile.ProfileTarget (default: %(default)s)",
    )  # fmt: skip
    profile.add_argument(
        "--size", default="10m", type=str.lower, choices=list(SIZES), help="built-in transformer size (10M = 10m)"
    )
    profile.add_argument(
        "--method", default="surgery", choices=["surgery", "gradient_difference", "pcgrad", "gradient_ascent"]
    )
    profile.add_argument("--steps", type=int, default=5)
    profile.add_argument("--warmup", type=int, default=1)
    profile.add_argument("--compare", action="store_true", help="also run the reference ops (cat + .item())")
    profile.add_argument("--batch", type=int, default=2)
    profile.add_argument("--seq-len", type=int, default=64)
    profile.add_argument("--device", default="cpu")
    profile.add_argument("--seed", type=int, default=0)
    profile.add_argument("--trace", metavar="PATH", help="write a torch.profiler Chrome trace of the fused steps")
    profile.add_argument("--json", metavar="PATH", help="write the report as JSON")


if __name__ == "__main__":
    main()
