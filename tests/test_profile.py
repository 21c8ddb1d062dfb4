"""The profiler's accounting: phases, bytes, host reads, overhead, outputs, and its reference ops."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import fastunlearn as fu
from fastunlearn import methods
from fastunlearn import profile as fp
from fastunlearn.cli import main as cli_main
from fastunlearn.profile import measure
from fastunlearn.profile.targets import make_method


@pytest.fixture(scope="module")
def report():
    return fp.profile_unlearning(size="tiny", steps=3, warmup=1, compare=True, progress=False)


def test_every_phase_is_timed_and_they_cover_the_step(report):
    for run in (report.fused, report.reference):
        assert list(run.phases) == list(fp.PHASES)
        # What is outside every phase is taken per step (step minus its phases), so it stays small
        # however noisy the machine; the medians of the phases need not add up to the step's median
        # (they may come from different steps), so their sum is not compared with it.
        assert 0 <= run.other_ms < 0.25 * run.step_median_ms
        for stats in run.phases.values():
            assert stats.min_ms <= stats.median_ms <= stats.max_ms


def test_byte_counts_follow_the_model(report):
    model = fp.transformer_target("tiny").model
    numel = sum(p.numel() for p in model.parameters())
    assert report.parameters == numel
    assert report.fused.phases["vector_algebra"].bytes == 8 * numel  # Gram reads g_f and g_r (fp32)
    assert report.fused.phases["optimizer"].bytes == 24 * numel  # fused SGD: 4 reads, 2 writes
    stats = report.fused.phases["vector_algebra"]
    assert stats.gbs == pytest.approx(stats.bytes / (stats.median_ms / 1e3) / 1e9)


def test_host_reads_speedups_and_overhead_are_reported(report):
    assert report.fused.host_reads_per_step == 0
    assert report.reference.host_reads_per_step == 2  # the dot product and the norm
    assert set(report.speedups) == {"step", "vector_algebra", "optimizer", "vector_algebra+optimizer"}
    assert report.profile_overhead == pytest.approx(report.fused.step_median_ms / report.unprofiled_step_median_ms - 1)
    assert report.fused.peak_rss_mb > 0


@pytest.mark.parametrize("name", sorted(fp.REFERENCES))
def test_reference_ops_compute_the_same_update_as_the_fused_method(name):
    target = fp.transformer_target("tiny")
    initial = {k: v.clone() for k, v in target.model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    batches = [(target.make_batch(gen), target.make_batch(gen)) for _ in range(3)]
    results = []
    for reference in (False, True):
        target.model.load_state_dict(initial)
        method = make_method(name, target.model, target, 1e-2, 0.9, reference)
        for forget_batch, retain_batch in batches:
            method.step(forget_batch, retain_batch)
        results.append(torch.cat([p.detach().reshape(-1) for p in target.model.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_a_user_module_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_unlearning_target.py").write_text(
        "import torch\n"
        "from fastunlearn.profile import ProfileTarget\n"
        "from fastunlearn.methods import cross_entropy\n"
        "def build():\n"
        "    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))\n"
        "    def batch(g):\n"
        "        return torch.randn(4, 8, generator=g), torch.randint(0, 3, (4,), generator=g)\n"
        "    return ProfileTarget(model, cross_entropy, batch)\n"
        "def wrong():\n"
        "    return torch.nn.Linear(2, 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    report = fp.profile_unlearning("my_unlearning_target:build", steps=2, warmup=0, progress=False)
    assert report.parameters == 8 * 16 + 16 + 16 * 3 + 3
    with pytest.raises(TypeError, match="ProfileTarget"):
        fp.profile_unlearning("my_unlearning_target:wrong", steps=1, progress=False)
    sys.modules.pop("my_unlearning_target", None)


SIZED_FACTORY = (
    "import torch\n"
    "from fastunlearn.profile import ProfileTarget\n"
    "from fastunlearn.methods import cross_entropy\n"
    "def build(size, batch, lora=None):\n"
    "    width = {'tiny': 4, '10m': 8}[size] * (lora or 1)\n"
    "    model = torch.nn.Linear(width, 3)\n"
    "    def make(g):\n"
    "        return torch.randn(batch, width, generator=g), torch.randint(0, 3, (batch,), generator=g)\n"
    "    return ProfileTarget(model, cross_entropy, make)\n"
)


def test_a_factory_from_a_file_or_the_current_directory_gets_the_cli_options(tmp_path, monkeypatch, capsys):
    (tmp_path / "sized_target.py").write_text(SIZED_FACTORY)
    out = tmp_path / "report.json"
    cli_main(["profile", "--model", f"{tmp_path / 'sized_target.py'}:build", "--size", "tiny", "--steps", "1",
              "--batch", "3", "--lora", "2", "--json", str(out)])  # fmt: skip
    assert json.loads(out.read_text())["parameters"] == 8 * 3 + 3  # width 4 * lora 2
    monkeypatch.chdir(tmp_path)  # a module of the current directory, as `python -m` finds it
    report = fp.profile_unlearning("sized_target:build", size="10m", steps=1, warmup=0, progress=False)
    assert report.parameters == 8 * 3 + 3
    sys.modules.pop("sized_target", None)


def test_cli_writes_json_and_a_trace(tmp_path, capsys):
    out, trace = tmp_path / "report.json", tmp_path / "trace.json"
    cli_main(["profile", "--size", "TINY", "--steps", "2", "--warmup", "0", "--json", str(out), "--trace", str(trace)])
    saved = json.loads(out.read_text())
    assert saved["config"]["size"] == "tiny" and "vector_algebra" in saved["fused"]["phases"]
    assert "traceEvents" in json.loads(trace.read_text())
    assert "profiler overhead" in capsys.readouterr().out


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        fp.profile_unlearning(size="5t", progress=False)
    with pytest.raises(ValueError, match="surgery, gru"):
        fp.profile_unlearning(size="tiny", method="pcgrad", compare=True, steps=1, progress=False)
    with pytest.raises(SystemExit):
        cli_main(["profile", "--model", "no_colon_here", "--steps", "1"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seq-len", "300"], "seq_len must be between 1 and 256"),
        (["--batch", "0"], "batch must be >= 1"),
        (["--steps", "0"], "steps >= 1"),
        (["--device", "no_such_device"], "device 'no_such_device' cannot be used here"),
        (["--model", "fastunlearn.profile:nope"], "has no attribute 'nope'"),
        (["--model", "no_such_module_here:f"], "cannot import 'no_such_module_here'"),
        (["--method", "pcgrad", "--compare"], "surgery, gru only, not 'pcgrad'"),
        (["--lora", "4"], "lora applies to model 'hf:llama' (or a factory taking it)"),
        (["--model", "no/such/file.py:build"], "no file 'no/such/file.py'"),
        (["--json", "no/such/dir/report.json"], "its directory does not exist"),
    ],
)
def test_cli_rejects_bad_options_before_running(flags, message, capsys, monkeypatch):
    # A run that started would call the bandwidth proxy first (from measure, where the run loop
    # looks it up); fail the test if it does.
    monkeypatch.setattr(measure, "bandwidth_proxy_gbs", lambda *a, **k: pytest.fail("the run started"))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["profile", "--size", "tiny", "--steps", "1", *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fastunlearn profile") and message in err


def test_module_entry_point_and_version():
    import subprocess

    result = subprocess.run([sys.executable, "-m", "fastunlearn", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"fastunlearn {fu.__version__}"


def test_count_host_reads_counts_and_restores():
    timer = fp.PhaseTimer()
    with fp.count_host_reads(timer) as counter:
        torch.ones(1).item()
        with timer.phase("forward_forget"):
            bool(torch.ones(1))
    assert counter == {None: 1, "forward_forget": 1}
    assert torch.Tensor.item.__name__ == "item"
    assert isinstance(methods.GradientSurgery, type)


@pytest.mark.parametrize("method", fp.METHODS)
def test_every_method_on_a_hugging_face_llama_with_lora(method):
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    compare = method in fp.REFERENCES
    report = fp.profile_unlearning(
        "hf:llama", size="tiny", method=method, steps=1, warmup=1, compare=compare, lora=4, progress=False
    )
    model = fp.llama_target("tiny", lora=4).model
    assert report.parameters == sum(p.numel() for p in model.parameters() if p.requires_grad) < 20_000
    assert report.fused.host_reads_per_step == 0  # the model's own reads are counted apart
    assert report.config["lora"] == 4
    assert ("vector_algebra" in report.fused.phases) == (method != "gradient_ascent")  # ascent: no algebra
    if compare:
        assert report.reference.host_reads_per_step > 0 and report.speedups["step"] > 0


READING_FACTORY = (
    "from dataclasses import dataclass\n"  # a dataclass in a module loaded from its file
    "import torch\n"
    "from fastunlearn.profile import ProfileTarget, transformer_target\n"
    "@dataclass\n"
    "class Options:\n"
    "    size: str\n"
    "class Reading(torch.nn.Module):\n"
    "    def __init__(self, inner):\n"
    "        super().__init__()\n"
    "        self.inner = inner\n"
    "    def forward(self, tokens):\n"
    "        bool(tokens.max() >= 0)  # the model's own host read, as Hugging Face mask code does\n"
    "        return self.inner(tokens)\n"
    "def build(size):\n"
    "    target = transformer_target(Options(size).size)\n"
    "    target.model = Reading(target.model)\n"
    "    return target\n"
)


@pytest.mark.parametrize("method", ["surgery", "nabla_tau"])
def test_model_host_reads_are_attributed_to_the_model(tmp_path, method):
    """Reads inside the model's forward passes (∇τ's validation pass included) are the model's;
    the method's own count stays 0."""
    factory = tmp_path / "reading_target.py"
    factory.write_text(READING_FACTORY)
    report = fp.profile_unlearning(f"{factory}:build", size="tiny", method=method, steps=2, warmup=0, progress=False)
    assert report.fused.host_reads_per_step == 0
    assert report.fused.model_host_reads_per_step >= 2  # two forward passes per step
    with pytest.raises(ValueError, match="takes no 'lora' argument"):
        fp.profile_unlearning(f"{factory}:build", size="tiny", steps=1, lora=2, progress=False)
    sys.modules.pop("reading_target", None)


@pytest.mark.parametrize("model", ["transformer", "hf:llama"])
def test_eval_times_both_ways_of_the_membership_statistics(model, capsys):
    if model == "hf:llama":
        pytest.importorskip("transformers")
    cli_main(["profile", "--model", model, "--size", "tiny", "--steps", "1", "--warmup", "0", "--eval"])
    out = capsys.readouterr().out
    assert "Min-K%++ statistics of one forget batch" in out and "never formed" in " ".join(out.split())
    target = fp.load_target(model, size="tiny", batch=2, seq_len=16)
    hidden, weight, targets = target.lm_head(target.model, target.make_batch(torch.Generator().manual_seed(0)))
    with torch.no_grad():  # the two ways agree: the comparison is of like with like
        expected = fu.eval.lm.materialised_stats(hidden @ weight.T, targets)
        stats = fu.token_stats(hidden, weight, targets)
    for got, want in zip((stats.target_logprob, stats.mean_logprob, stats.var_logprob), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_eval_needs_a_language_model(tmp_path):
    (tmp_path / "plain_target.py").write_text(SIZED_FACTORY)
    with pytest.raises(ValueError, match="no lm_head"):
        fp.profile_unlearning(f"{tmp_path / 'plain_target.py'}:build", steps=1, eval_stats=True, progress=False)
    sys.modules.pop("plain_target", None)
