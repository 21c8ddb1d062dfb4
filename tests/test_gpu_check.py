"""benchmarks/gpu_check.py --dry-run: every stage of the GPU check at tiny sizes on CPU, so the one
prepared GPU command is known to work before a GPU runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_check import OPS  # noqa: E402


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpu-check")
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", str(out), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_every_stage_runs(dry_run):
    report = json.loads((dry_run / "report.json").read_text())
    stages = {s["stage"]: s["status"] for s in report["stages"]}
    assert list(stages) == ["build", "test_gpu", "measure", "profile", "test_token_stats", "token_stats", "test_triton"]
    assert stages["test_gpu"] in ("ok", "no tests ran")  # skipped as a whole without a CUDA device
    assert all(status == "ok" for name, status in stages.items() if name != "test_gpu"), stages
    for name in stages:
        assert (dry_run / f"{name}.log").stat().st_size > 0
    assert {"device", "torch", "triton", "python", "extension_links"} <= set(report["environment"])
    assert json.loads((dry_run / "profile.json").read_text())


def test_every_op_is_measured_against_its_peers(dry_run):
    cases = json.loads((dry_run / "report.json").read_text())["cases"]
    measured = [c for c in cases if "skipped" not in c]
    for op in OPS:
        backends = {c["backend"] for c in measured if c["op"] == op}
        assert {"cpp", "torch"} <= backends, (op, backends)
    assert {c["shards"] for c in measured} == {"llama", 10}  # the shard-mix sizes and the many-shard case
    assert {c["dtype"] for c in measured} == {"float32", "bfloat16"}
    assert all(c["seconds"] > 0 and c["host_us"] > 0 and 0 < c["fraction_of_copy"] for c in measured)
    assert {c["backend"] for c in measured if c["op"] == "project_"} >= {"cat"}


def test_the_report_lists_stages_and_cases(dry_run):
    text = (dry_run / "report.md").read_text()
    assert "| stage | status | wall s |" in text
    assert "| token_stats |" in text and "| materialised |" in text  # the token_stats table
    for op in OPS:
        assert f"| {op} | float32 |" in text
