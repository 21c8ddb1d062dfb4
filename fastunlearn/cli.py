"""The ``fastunlearn`` command."""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fastunlearn", description="Fused gradient algebra for machine unlearning.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("showcase", help="run the ops on a synthetic gradient, next to the code they replace")
    commands.add_parser("backends", help="list the backends and whether each can run here")
    args = parser.parse_args(argv)
    if args.command == "showcase":
        from fastunlearn import showcase

        showcase.main()
    elif args.command == "backends":
        import fastunlearn

        print(json.dumps(fastunlearn.backends(), indent=2))


if __name__ == "__main__":
    main()
