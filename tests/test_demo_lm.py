"""fastunlearn demo --task lm --quick: every method through the Trainer, against retraining."""

from __future__ import annotations

import random

import pytest
from helpers import quick_demo

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from fastunlearn.cli import main as cli_main  # noqa: E402
from fastunlearn.demo import lm  # noqa: E402


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return quick_demo("lm", tmp_path_factory.mktemp("demo-lm"), ("accuracy.png",))


def test_the_facts_are_deterministic_and_split_by_person():
    a, b = lm.make_facts(40, 10, seed=0), lm.make_facts(40, 10, seed=0)
    assert a.texts == b.texts and len(a.forget) == 4 * 4 and len(a.retain) == 36 * 4 and len(a.held_out) == 10 * 4
    assert not set(a.texts["validation"]) & set(a.texts["held_out"])
    names = [p["name"] for p in lm.people(40, random.Random(0))]  # make_facts draws these first
    for index, name in enumerate(names):
        side = "forget" if index < 4 else "retain"
        assert sum(name in t for t in a.texts[side]) == 4
        assert not any(name in t for t in a.texts["held_out"] + a.texts["validation"])
    assert lm.make_facts(40, 10, seed=1).texts != a.texts
    item = a.forget[0]
    counted = item["labels"] != -100
    assert int(counted.sum()) == 1 and bool((item["input_ids"][counted] > 2).all())  # the answer word only


def test_original_memorises_and_retraining_does_not_know_the_forget_set(results):
    rows = results["table"]
    assert rows["original"]["forget_accuracy"] >= 0.95 and rows["original"]["retain_accuracy"] >= 0.95
    assert rows["retrain"]["forget_accuracy"] <= 0.3 and rows["retrain"]["retain_accuracy"] >= 0.95
    assert rows["original"]["mia_auc"] > rows["retrain"]["mia_auc"] + 0.2  # the forget facts were members


def test_every_method_unlearns_and_the_papers_methods_keep_the_retain_set(results):
    """The bars this test holds (looser than the demo's own, which the README reports as met or
    missed): every method lowers forget accuracy; the papers' methods take it below 0.6 while retain
    accuracy stays at 0.9 or above."""
    rows = results["table"]
    assert set(rows) == {"original", "retrain", *lm.RECIPES}
    for name in lm.RECIPES:
        assert rows[name]["forget_accuracy"] < rows["original"]["forget_accuracy"] - 0.2, name
    for name in lm.SEED_METHODS:
        assert rows[name]["forget_accuracy"] <= 0.6 and rows[name]["retain_accuracy"] >= 0.9, name
        assert set(rows[name]["bars"]) == {"forget_gap", "retain_drop", "ok"}
    # DecoupleRetain with projected retention: the forget facts do not come back during retention
    assert rows["decouple_retain"]["forget_accuracy"] <= 0.2 and rows["decouple_retain"]["retain_accuracy"] >= 0.95


def test_the_bars():
    original, retrained = {"retain_accuracy": 1.0}, {"forget_accuracy": 0.1}
    assert lm.meets_bars({"forget_accuracy": 0.19, "retain_accuracy": 0.96}, retrained, original)["ok"]
    assert not lm.meets_bars({"forget_accuracy": 0.22, "retain_accuracy": 1.0}, retrained, original)["ok"]
    assert not lm.meets_bars({"forget_accuracy": 0.1, "retain_accuracy": 0.94}, retrained, original)["ok"]
    assert lm.meets_bars({"forget_accuracy": 0.0, "retain_accuracy": 1.0}, retrained, original)["ok"]


def test_bad_options(capsys):
    with pytest.raises(SystemExit):
        cli_main(["demo", "--task", "lm", "--methods", "surgery", "no_such_method"])
    assert "unknown method(s) ['no_such_method']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["demo", "--task", "lm", "--forget", "class:3"])
    assert "--forget and --seed apply to the digits task" in capsys.readouterr().err
