"""The ``fastunlearn`` command."""

from __future__ import annotations

import argparse
import json


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except the empty ones of flags and optional paths."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def main(argv: list[str] | None = None) -> None:
    import fastunlearn

    parser = argparse.ArgumentParser(prog="fastunlearn", description="Fused gradient algebra for machine unlearning.")
    parser.add_argument("--version", action="version", version=f"fastunlearn {fastunlearn.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_command(commands, "showcase", "run the ops on a synthetic gradient, next to the code they replace")
    _add_command(commands, "backends", "list the backends and whether each can run here (JSON)")
    demo = _add_demo_parser(commands)
    profile = _add_profile_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "showcase":
        from fastunlearn import showcase

        showcase.main()
    elif args.command == "demo":
        _run_demo(args, demo)
    elif args.command == "profile":
        from fastunlearn import profile as profiler

        try:
            profiler.main(args)
        except (ValueError, TypeError, ImportError) as exc:
            profile.error(str(exc))
    elif args.command == "backends":
        print(json.dumps(fastunlearn.backends(), indent=2))


def _add_command(commands, name: str, summary: str) -> argparse.ArgumentParser:
    return commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".",
                               formatter_class=_Formatter)  # fmt: skip


def _add_demo_parser(commands) -> argparse.ArgumentParser:
    from fastunlearn.demo.i2i import RECIPES as I2I_RECIPES
    from fastunlearn.demo.lm import RECIPES as LM_RECIPES
    from fastunlearn.demo.recipes import RECIPES

    demo = _add_command(commands, "demo", "unlearning with every method, evaluated against retraining and reported")
    demo.add_argument(
        "--task", choices=("digits", "i2i", "lm"), default="digits",
        help="digits: a classifier and a VAE on bundled digits; i2i: an inpainting model on the digits; "
        "lm: fictitious people's facts in a tiny Llama",
    )  # fmt: skip
    demo.add_argument(
        "--quick", action="store_true",
        help="the short preset (digits: two forget sets instead of four, half the VAE samples; i2i: class "
        "forgetting only; lm: one seed of three)",
    )  # fmt: skip
    demo.add_argument("--out", help="output directory, created if missing (default: fastunlearn-demo[-i2i|-lm])")
    demo.add_argument(
        "--methods", nargs="+", metavar="NAME",
        help=f"methods to run (default: all); digits: {', '.join(RECIPES)}; i2i: {', '.join(I2I_RECIPES)}; "
        f"lm: {', '.join(LM_RECIPES)}",
    )  # fmt: skip
    demo.add_argument(
        "--forget", action="append", metavar="SPEC", help="class:N or random:F; repeat for several (default: preset's)"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the data split, the models and the methods")
    return demo


def _run_demo(args, demo: argparse.ArgumentParser) -> None:
    from pathlib import Path

    from fastunlearn.demo import DemoConfig, run_demo
    from fastunlearn.demo.recipes import RECIPES

    out = Path(args.out or {"digits": "fastunlearn-demo"}.get(args.task, f"fastunlearn-demo-{args.task}"))
    if out.exists() and not out.is_dir():
        demo.error(f"--out {out} exists and is not a directory")
    preset = "quick" if args.quick else "full"
    if args.task == "lm":
        from fastunlearn.demo.lm import RECIPES as LM_RECIPES
        from fastunlearn.demo.lm import LMDemoConfig, run_lm_demo

        if args.forget or args.seed != 0:
            demo.error("--forget and --seed apply to the digits task; the lm task forgets 10% of the people, "
                       "seeds 0 (--quick) or 0, 1, 2")  # fmt: skip
        try:
            lm_config = LMDemoConfig(preset=preset, out=out, methods=args.methods or list(LM_RECIPES))
        except ValueError as exc:
            demo.error(str(exc))
        run_lm_demo(lm_config)
        return
    if args.task == "i2i":
        from fastunlearn.demo.i2i import RECIPES as I2I_RECIPES
        from fastunlearn.demo.i2i import I2IDemoConfig, run_i2i_demo

        try:
            i2i_config = I2IDemoConfig(
                preset=preset, out=out, methods=args.methods or list(I2I_RECIPES), forgets=args.forget, seed=args.seed
            )
        except ValueError as exc:
            demo.error(str(exc))
        run_i2i_demo(i2i_config)
        return
    try:
        config = DemoConfig(
            preset=preset, out=out, methods=args.methods or list(RECIPES), forgets=args.forget, seed=args.seed,
        )  # fmt: skip
    except ValueError as exc:
        demo.error(str(exc))
    run_demo(config)


def _add_profile_parser(commands) -> argparse.ArgumentParser:
    from fastunlearn.profile import CONTEXT, METHODS, SIZES

    profile = _add_command(commands, "profile", "time and memory per phase of unlearning steps on a model")
    profile.add_argument(
        "--model", default="transformer",
        help="'transformer' or 'hf:llama' (built in; random init) or package.module:factory returning a "
        "fastunlearn.profile.ProfileTarget",
    )  # fmt: skip
    profile.add_argument(
        "--size", default="10m", type=str.lower, choices=list(SIZES), help="built-in model size (10M = 10m)"
    )
    profile.add_argument("--lora", type=int, metavar="R", help="hf:llama only: train rank-R LoRA adapters")
    profile.add_argument(
        "--eval", action="store_true",
        help="also time Min-K%%++ statistics of a forget batch: materialised log_softmax vs fastunlearn.token_stats",
    )  # fmt: skip
    profile.add_argument("--method", default="surgery", choices=METHODS, help="unlearning method to step")
    profile.add_argument("--steps", type=int, default=5, help="profiled steps (each timed per phase)")
    profile.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    profile.add_argument(
        "--compare", action="store_true", help="also run the reference ops (cat + .item()); surgery and gru"
    )
    profile.add_argument("--batch", type=int, default=2, help="sequences per forget and per retain batch")
    profile.add_argument("--seq-len", type=int, default=64, help=f"tokens per sequence (at most {CONTEXT})")
    profile.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    profile.add_argument("--seed", type=int, default=0, help="seed of the weights and the batches")
    profile.add_argument("--trace", metavar="PATH", help="write a torch.profiler Chrome trace of the fused steps")
    profile.add_argument("--json", metavar="PATH", help="write the report as JSON")
    return profile


if __name__ == "__main__":
    main()
