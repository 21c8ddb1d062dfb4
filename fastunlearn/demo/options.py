"""What every demo checks of its options before it starts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar


def check_selection(preset: str, presets: Mapping, methods: Iterable[str], recipes: Mapping) -> None:
    """A known preset and known methods, or a ValueError naming the choices."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(presets)}")
    unknown = [m for m in methods if m not in recipes]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; expected some of {list(recipes)}")


@dataclass
class DigitsDemoConfig:
    """The options of the demos on the digits (the classifier/VAE demo and the I2I demo): each
    subclass names its ``presets``, its ``recipes`` and its default output folder. ``methods``
    defaults to every recipe; ``forgets`` to the preset's forget sets, each checked."""

    presets: ClassVar[Mapping[str, dict]] = {}
    recipes: ClassVar[Mapping[str, Any]] = {}

    preset: str = "full"
    out: Path = Path("fastunlearn-demo")
    methods: list[str] | None = None
    forgets: list[str] | None = None
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        from fastunlearn.demo.data import parse_forget

        self.methods = list(self.recipes) if self.methods is None else list(self.methods)
        check_selection(self.preset, self.presets, self.methods, self.recipes)
        self.forgets = list(self.forgets or self.presets[self.preset]["forgets"])
        for spec in self.forgets:
            parse_forget(spec)

    @property
    def settings(self) -> dict:
        return self.presets[self.preset]
