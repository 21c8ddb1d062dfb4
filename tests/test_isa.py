"""The CPU kernels' ISA levels: the FASTUNLEARN_CPU_ISA switch, and the same bits at every level.

Each level runs in its own process (the level is read once, when the extension loads). The levels
forced on this CPU run the same code as on a CPU whose best they are, except for the level check
itself, and a wide instruction outside the clones would only fail on the smaller CPU: so the
suite also starts the extension on emulated CPUs that lack AVX-512 and AVX2 (qemu's user-mode
emulator, where it is installed: `make test` installs it on Debian-like machines).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
from test_numerics import cancelling_pair
from tolerances import fp32_dot_bound

import fastunlearn as fu

LEVELS = ("avx512", "avx2", "baseline")
TESTS = Path(__file__).parent
EMULATOR = shutil.which("qemu-x86_64")
# qemu's CPU models: a Zen 2 server (AVX2, FMA and F16C, no AVX-512) and a CPU with AVX but no AVX2.
EMULATED_BEST = {"EPYC-Rome": "avx2", "SandyBridge": "baseline"}


def run(level: str | None, *args: str, cpu: str | None = None, **env_vars: str) -> subprocess.CompletedProcess:
    """python *args at `level` (None: the default), on qemu's model of `cpu` when one is named."""
    env = {k: v for k, v in os.environ.items() if k != "FASTUNLEARN_CPU_ISA"} | env_vars
    if level is not None:
        env["FASTUNLEARN_CPU_ISA"] = level
    emulator = [] if cpu is None else [EMULATOR, "-cpu", cpu]
    return subprocess.run([*emulator, sys.executable, *args], env=env, cwd=TESTS, capture_output=True, text=True,
                          timeout=300 if cpu is None else 900)


@cache
def probe(level: str) -> subprocess.CompletedProcess:
    return run(level, "-c", "import fastunlearn as fu; print(fu.cpu_isa())")


def supported() -> list[str]:
    return [level for level in LEVELS if probe(level).returncode == 0]


@cache
def outputs(level: str | None, cpu: str | None = None, portable_torch: bool = False) -> dict:
    """isa_cases.py at `level` (None: the default), on qemu's `cpu` when one is named. torch's own
    kernels (its random numbers among them) differ by the CPU they pick: runs on different CPUs
    compare only with `portable_torch`, torch's portable kernels, and so the same inputs."""
    env = {"ATEN_CPU_CAPABILITY": "default"} if portable_torch else {}
    done = run(level, "isa_cases.py", cpu=cpu, **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_default_is_the_best_level_this_cpu_supports():
    default = run(None, "-c", "import fastunlearn as fu; print(fu.cpu_isa(), fu.backends()['cpp'])")
    assert default.returncode == 0, default.stderr
    level, report = default.stdout.split(maxsplit=1)
    assert level == supported()[0]
    assert report.strip() == f"available ({level})"


def test_a_forced_level_is_the_one_in_use():
    for level in supported():
        assert probe(level).stdout.strip() == level
    assert "baseline" in supported()  # every x86-64 (and every other) CPU runs the baseline clone


def test_an_unknown_level_fails_the_import():
    done = run("sse9", "-c", "import fastunlearn")
    assert done.returncode != 0
    assert "FASTUNLEARN_CPU_ISA=sse9 is not a level; expected avx512, avx2 or baseline" in done.stderr


def test_a_level_this_cpu_lacks_fails_the_import():
    lacking = [level for level in LEVELS if level not in supported()]
    if not lacking:
        pytest.skip("this CPU supports every level")
    for level in lacking:
        assert "this CPU does not support that level" in probe(level).stderr


def assert_same_bits(other: dict, reference: dict, what: str) -> None:
    """`other` (isa_cases' output) gives `reference`'s one-thread bits at one and at two threads."""
    one_thread = reference["digests"]["1"]
    differing = [case for case, value in other["digests"]["1"].items() if one_thread[case] != value]
    assert not differing, f"{what} differs from {reference['level']} in {differing}"
    assert other["digests"]["2"] == one_thread
    assert other["cancellation"] == reference["cancellation"]


def test_every_level_and_thread_count_gives_the_same_bits():
    levels = supported()
    reference = outputs(levels[0])
    assert reference["digests"]["1"] == reference["digests"]["2"]
    for level in levels[1:]:
        other = outputs(level)
        assert other["level"] == level
        assert_same_bits(other, reference, level)


@pytest.mark.parametrize("level", LEVELS)
def test_fp32_cancellation_at_every_level(level):
    """test_numerics' 1e5-element cancelling fp32 dot, through the K = 2 and the K >= 5 Gram
    kernels, within a bound that fp32 accumulation misses (checked there)."""
    if level not in supported():
        pytest.skip(f"this CPU lacks {level}")
    a, b = cancelling_pair(100_003, seed=3)
    exact = torch.dot(a.double(), b.double()).item()
    bound = fp32_dot_bound(exact, torch.dot(a.double().abs(), b.double().abs()).item(), len(a))
    for name, value in outputs(level)["cancellation"].items():
        assert abs(float.fromhex(value) - exact) <= bound, name


def test_the_in_process_level_matches_the_switch():
    forced = os.environ.get("FASTUNLEARN_CPU_ISA")
    assert fu.cpu_isa() == (forced or supported()[0])


@cache
def emulator_missing() -> str | None:
    """Why the emulated CPUs cannot run here, or None."""
    if platform.machine() != "x86_64" or sys.platform != "linux":
        return "emulated x86-64 CPUs need an x86-64 Linux host"
    if EMULATOR is None:
        return "qemu-x86_64 (Debian's qemu-user) is not installed"
    found = re.search(r"version (\d+)\.(\d+)", subprocess.run([EMULATOR, "--version"], capture_output=True, text=True).stdout)
    if found is None or (int(found[1]), int(found[2])) < (7, 2):
        return "this qemu predates 7.2, the first to emulate AVX2, FMA and F16C"
    return None


needs_emulator = pytest.mark.skipif(emulator_missing() is not None, reason=str(emulator_missing()))


@needs_emulator
@pytest.mark.parametrize("cpu", EMULATED_BEST)
def test_an_emulated_cpu_runs_its_best_level_with_the_same_bits(cpu):
    emulated = outputs(None, cpu, portable_torch=True)
    assert emulated["level"] == EMULATED_BEST[cpu]
    assert_same_bits(emulated, outputs(supported()[0], portable_torch=True), f"{cpu} ({emulated['level']})")


@needs_emulator
@pytest.mark.parametrize("cpu", EMULATED_BEST)
def test_an_emulated_cpu_refuses_the_level_above_its_best(cpu):
    best = EMULATED_BEST[cpu]
    above = LEVELS[LEVELS.index(best) - 1]
    done = run(above, "-c", "import fastunlearn", cpu=cpu)
    assert done.returncode != 0
    assert f"FASTUNLEARN_CPU_ISA={above}: this CPU does not support that level (its best is {best})" in done.stderr
