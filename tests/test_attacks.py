"""The membership attacks of fastunlearn.eval measure what they claim: held-out (cross-validated)
accuracy, members labelled as members, against independent implementations on small data."""

from __future__ import annotations

import numpy as np
import pytest

from fastunlearn import eval as ev

pytest.importorskip("sklearn")

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import StratifiedShuffleSplit  # noqa: E402


def held_out_accuracy(members: np.ndarray, others: np.ndarray, seed: int) -> float:
    """simple_mia written out: the same balanced draw, each split fitted on its training part and
    scored on its held-out part."""
    rng = np.random.default_rng(seed)
    n = min(len(members), len(others))
    x = np.concatenate([members[rng.choice(len(members), n, replace=False)],
                        others[rng.choice(len(others), n, replace=False)]])[:, None]  # fmt: skip
    y = np.concatenate([np.ones(n), np.zeros(n)])
    scores = []
    for train, test in StratifiedShuffleSplit(n_splits=10, random_state=seed).split(x, y):
        scores.append((LogisticRegression().fit(x[train], y[train]).predict(x[test]) == y[test]).mean())
    return float(np.mean(scores))


def test_simple_mia_is_the_held_out_accuracy():
    """Overlapping features (a weak signal): the held-out accuracy differs from the training one,
    and simple_mia is the held-out one."""
    rng = np.random.default_rng(3)
    members, others = rng.normal(0.3, 1.0, 40), rng.normal(0.0, 1.0, 55)
    expected = held_out_accuracy(members, others, seed=5)
    assert ev.simple_mia(members, others, seed=5) == pytest.approx(expected, abs=1e-12)
    x = np.concatenate([members[:40], others[:40]])[:, None]
    y = np.concatenate([np.ones(40), np.zeros(40)])
    training = (LogisticRegression().fit(x, y).predict(x) == y).mean()
    assert abs(training - expected) > 0.02  # the data tells the two apart


def overfittable(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """30 members and 30 non-members of one distribution in 80 dimensions: a logistic regression
    separates any training part perfectly, and no held-out part."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(30, 80)), rng.normal(size=(30, 80))


def test_attack_audit_reports_held_out_not_training_accuracy():
    members, others = overfittable(0)
    x, y = np.concatenate([members, others]), np.concatenate([np.ones(30), np.zeros(30)])
    assert (LogisticRegression().fit(x, y).predict(x) == y).mean() == 1.0  # training accuracy
    audits = [ev.attack_audit(*overfittable(seed), seed=seed) for seed in range(4)]
    assert abs(np.mean([a["accuracy"] for a in audits]) - 0.5) < 0.15
    assert abs(np.mean([a["auc"] for a in audits]) - 0.5) < 0.15


@pytest.mark.parametrize("direction", [-1.0, 1.0])
def test_attack_audit_calls_members_members(direction):
    """Members shifted either way along one feature: accuracy and the AUC of the member probability
    near 1 (labels swapped anywhere between the fit and the scores would give near 0)."""
    rng = np.random.default_rng(1)
    members, others = rng.normal(size=(80, 4)), rng.normal(size=(60, 4))
    members[:, 2] += direction * 4.0
    audit = ev.attack_audit(members, others)
    assert audit["accuracy"] > 0.95 and audit["auc"] > 0.97


def test_svc_mia_efficacy_counts_forget_samples_called_non_members():
    """Forget confidences half like the members', half like the non-members': half are called
    non-members."""
    rng = np.random.default_rng(2)
    members, non_members = rng.uniform(0.95, 1.0, 100), rng.uniform(0.2, 0.5, 100)
    forget = np.concatenate([rng.uniform(0.96, 0.99, 50), rng.uniform(0.25, 0.45, 50)])
    assert ev.svc_mia_efficacy(members, non_members, forget) == pytest.approx(0.5, abs=0.02)


def test_attack_audit_on_small_and_on_non_finite_sets():
    """Three samples a side still hold one of each out per split; a NaN feature (a diverged model)
    gives NaN, not an exception halfway through a report."""
    rng = np.random.default_rng(4)
    audit = ev.attack_audit(rng.normal(size=(3, 2)) + 5.0, rng.normal(size=(3, 2)))
    assert 0.0 <= audit["accuracy"] <= 1.0 and 0.0 <= audit["auc"] <= 1.0
    members = rng.normal(size=(20, 2))
    members[4, 1] = np.nan
    assert all(np.isnan(v) for v in ev.attack_audit(members, rng.normal(size=(20, 2))).values())


def test_attacks_refuse_fewer_than_two_samples_a_side():
    with pytest.raises(ValueError, match="at least 2 samples"):
        ev.attack_audit(np.zeros((1, 3)), np.zeros((5, 3)))
