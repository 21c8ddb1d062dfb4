"""fastunlearn demo --task i2i --quick: an inpainting model on the digits, every method against
retraining, with the attack audit."""

from __future__ import annotations

import pytest
import torch
from helpers import quick_demo

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from fastunlearn.demo import i2i  # noqa: E402


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    (run,) = quick_demo("i2i", tmp_path_factory.mktemp("demo-i2i"), ("i2i_outputs.png", "i2i_metrics.png"))["runs"]
    assert run["forget"] == "class:3"
    return run["rows"]


def test_inputs_hide_the_right_half_and_carry_the_mask():
    images = torch.rand(3, 64)
    inputs = i2i.masked_inputs(images, i2i.right_half_mask())
    assert inputs.shape == (3, 2, 8, 8)
    assert torch.equal(inputs[:, 0, :, :4], images.view(3, 8, 8)[:, :, :4])
    assert not inputs[:, 0, :, 4:].any() and bool((inputs[:, 1, :, 4:] == 1).all()) and not inputs[:, 1, :, :4].any()


def test_the_original_memorises_and_the_audit_sees_it(results):
    """The setting is meaningful: the original reconstructs its training digits far better than
    unseen ones and the attack audit finds the forget set's membership; the retrained model has
    never seen it (the audit near chance, the forget error at the unseen level)."""
    original, retrain = results["Original"], results["Retrain"]
    assert original["mse_forget"] < 0.5 * retrain["mse_forget"]
    assert original["audit_accuracy"] > 0.8 and abs(retrain["audit_accuracy"] - 0.5) < 0.1
    assert original["class_share"] > retrain["class_share"]


def test_decouple_retain_meets_the_bars_and_plain_retention_relearns(results):
    """The issue's bars for DecoupleRetain on class forgetting: the attack audit within 0.1 of the
    retrained model's accuracy, the retain reconstruction error within 25% of the original's. With
    the paper's plain retention the same run relearns the forget samples (the audit back near the
    original's): the projected retention is what holds the audit."""
    original, retrain, method = results["Original"], results["Retrain"], results["DecoupleRetain"]
    assert abs(method["audit_accuracy"] - retrain["audit_accuracy"]) <= 0.1
    assert method["mse_retain"] <= 1.25 * original["mse_retain"]
    assert method["bars"]["ok"] and method["class_share"] < 0.1
    plain = results["DecoupleRetain/plain"]
    assert plain["audit_accuracy"] > method["audit_accuracy"] + 0.2
    assert plain["mse_forget"] < 2 * original["mse_forget"]


def test_every_method_runs_and_is_reported(results):
    assert set(results) == {"Original", "Retrain", *i2i.RECIPES}
    for name in i2i.RECIPES:
        row = results[name]
        assert 0.0 <= row["audit_accuracy"] <= 1.0 and row["mse_retain"] > 0 and row["seconds"] > 0, name
    # max-loss destroys the model (the reason Li et al. and the Decoupling paper do not stop at ascent)
    assert results["MaxLoss"]["mse_retain"] > 10 * results["Original"]["mse_retain"]
