"""What every demo checks of its options before it starts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def check_selection(preset: str, presets: Mapping, methods: Iterable[str], recipes: Mapping) -> None:
    """A known preset and known methods, or a ValueError naming the choices."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(presets)}")
    unknown = [m for m in methods if m not in recipes]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; expected some of {list(recipes)}")


def forget_sets(preset: str, presets: Mapping, methods: Iterable[str], recipes: Mapping, forgets) -> list[str]:
    """The digits demos' checks: :func:`check_selection`, then the forget sets (the preset's unless
    given), each a valid ``class:N`` / ``random:F``."""
    from fastunlearn.demo.data import parse_forget

    check_selection(preset, presets, methods, recipes)
    chosen = list(forgets or presets[preset]["forgets"])
    for spec in chosen:
        parse_forget(spec)
    return chosen
