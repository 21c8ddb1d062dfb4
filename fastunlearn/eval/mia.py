"""Membership inference against an unlearned classifier (scikit-learn attack models).

* :func:`simple_mia` -- the attack of the NeurIPS 2023 unlearning challenge that ∇τ reports: one
  feature per sample, the loss (MIA-L) or the softmax entropy (MIA-E); forget samples labelled 1,
  test samples 0, balanced by subsampling the larger side; logistic regression scored by
  cross-validation over a stratified shuffle split of 10 splits; the mean accuracy. An attacker
  that cannot tell forget from test data scores 0.5; compare with the retrained model's score.
* :func:`svc_mia_efficacy` -- the confidence attack of SalUn-style papers ("MIA efficacy"): an SVC
  trained to separate retain (member) from test (non-member) samples by the true-class confidence,
  then applied to the forget set; the share of forget samples it calls non-members. Higher means
  more forgotten; compare with retrain.
* :func:`attack_audit` -- the attack model of the Decoupling + Retention paper's audit: several
  features per sample (e.g. an image-to-image model's reconstruction error and its output's
  features), members (the forget set) against unseen samples of the same distribution; a
  standardised logistic regression over the same balanced, stratified shuffle split as
  :func:`simple_mia`; held-out accuracy and AUC. Ideal: the retrained model's values.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from fastunlearn.eval.classifier import predict

FEATURES = ("loss", "entropy")


def sample_features(model: nn.Module, loader: Iterable) -> dict[str, np.ndarray]:
    """Per-sample loss, softmax entropy and true-class confidence of ``model`` on ``loader``."""
    logits, labels, losses = predict(model, loader)
    probs = torch.softmax(logits.float(), dim=1)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
    confidence = probs.gather(1, labels[:, None]).squeeze(1)
    return {
        "loss": losses.cpu().numpy(),
        "entropy": entropy.cpu().numpy(),
        "confidence": confidence.cpu().numpy(),
    }


def _balanced(members: np.ndarray, others: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[2n, d]`` (a 1-D feature becomes ``d = 1``): n members labelled 1, then n others
    labelled 0, each side subsampled to the smaller one's size with ``seed``."""
    rng = np.random.default_rng(seed)
    n = min(len(members), len(others))
    if n < 2:
        raise ValueError("membership inference needs at least 2 samples on each side")
    members = members[rng.choice(len(members), n, replace=False)]
    others = others[rng.choice(len(others), n, replace=False)]
    x = np.concatenate([members, others]).reshape(2 * n, -1)
    y = np.concatenate([np.ones(n), np.zeros(n)])
    return x, y


def simple_mia(forget_feature: np.ndarray, test_feature: np.ndarray, *, n_splits: int = 10, seed: int = 0) -> float:
    """Mean cross-validated accuracy of a logistic regression telling forget (1) from test (0).

    >>> import numpy as np, fastunlearn as fu
    >>> rng = np.random.default_rng(0)
    >>> fu.eval.simple_mia(rng.normal(0.0, 0.1, 50), rng.normal(2.0, 0.1, 50))  # forget losses far below test
    1.0
    >>> 0.3 < fu.eval.simple_mia(rng.normal(1.0, 0.5, 50), rng.normal(1.0, 0.5, 50)) < 0.7  # no signal: ~0.5
    True
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score

    x, y = _balanced(np.asarray(forget_feature), np.asarray(test_feature), seed)
    cv = StratifiedShuffleSplit(n_splits=n_splits, random_state=seed)
    return float(cross_val_score(LogisticRegression(), x, y, cv=cv, scoring="accuracy").mean())


def attack_audit(
    member_features: np.ndarray, nonmember_features: np.ndarray, *, n_splits: int = 10, seed: int = 0
) -> dict[str, float]:
    """Held-out ``accuracy`` and ``auc`` of a membership attack on per-sample features ``[n, d]``.

    Members are labelled 1 and non-members 0, balanced as in :func:`simple_mia`; for each of
    ``n_splits`` stratified shuffle splits a standardised logistic regression is fitted on the
    training part and scored on the held-out part: accuracy of its predictions, and AUC of its
    member probability (above 0.5: members score as members). Means over the splits. 0.5 and 0.5:
    the attacker cannot tell members from non-members. NaN and NaN where a feature is not finite.

    >>> import numpy as np, fastunlearn as fu
    >>> rng = np.random.default_rng(0)
    >>> members, unseen = rng.normal(0.0, 1.0, (60, 3)), rng.normal(0.0, 1.0, (60, 3))
    >>> members[:, 0] -= 3.0  # members' reconstruction error far lower
    >>> audit = fu.eval.attack_audit(members, unseen)
    >>> audit["accuracy"] > 0.9, audit["auc"] > 0.9
    (True, True)
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedShuffleSplit
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _balanced(np.asarray(member_features, dtype=np.float64), np.asarray(nonmember_features, dtype=np.float64),
                     seed)  # fmt: skip
    if not np.isfinite(x).all():
        return {"accuracy": float("nan"), "auc": float("nan")}  # a diverged model's outputs: no attack to fit
    # MIA-L's split holds out 10 %; at least one sample of each side (small sets).
    split = StratifiedShuffleSplit(n_splits=n_splits, test_size=max(0.1, 2 / len(y)), random_state=seed)
    accuracy, auc = [], []
    for train, held_out in split.split(x, y):
        attack = make_pipeline(StandardScaler(), LogisticRegression()).fit(x[train], y[train])
        accuracy.append(float((attack.predict(x[held_out]) == y[held_out]).mean()))
        auc.append(float(roc_auc_score(y[held_out], attack.predict_proba(x[held_out])[:, 1])))
    return {"accuracy": float(np.mean(accuracy)), "auc": float(np.mean(auc))}


def svc_mia_efficacy(
    retain_confidence: np.ndarray, test_confidence: np.ndarray, forget_confidence: np.ndarray, *, seed: int = 0
) -> float:
    """Share of forget samples an SVC (trained on retain=member vs test=non-member) calls non-members.

    >>> import numpy as np, fastunlearn as fu
    >>> rng = np.random.default_rng(0)
    >>> retain, test = rng.uniform(0.9, 1.0, 50), rng.uniform(0.2, 0.6, 50)
    >>> fu.eval.svc_mia_efficacy(retain, test, rng.uniform(0.2, 0.6, 20))  # forget looks like test: forgotten
    1.0
    >>> fu.eval.svc_mia_efficacy(retain, test, rng.uniform(0.9, 1.0, 20))  # forget looks like retain: remembered
    0.0
    """
    from sklearn.svm import SVC

    x, y = _balanced(np.asarray(retain_confidence), np.asarray(test_confidence), seed)
    attack = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
    return float((attack.predict(np.asarray(forget_confidence).reshape(-1, 1)) == 0).mean())


def membership_inference(
    model: nn.Module, forget: Iterable, retain: Iterable, test: Iterable, *, seed: int = 0
) -> dict[str, float]:
    """MIA-L, MIA-E and the SVC MIA efficacy of ``model`` in one call.

    >>> import torch, fastunlearn as fu
    >>> _ = torch.manual_seed(0)
    >>> data = torch.utils.data.TensorDataset(torch.randn(24, 4), torch.randint(0, 3, (24,)))
    >>> loader = lambda idx: torch.utils.data.DataLoader(torch.utils.data.Subset(data, idx), batch_size=8)
    >>> forget, retain, test = loader(range(8)), loader(range(8, 16)), loader(range(16, 24))
    >>> scores = fu.eval.membership_inference(torch.nn.Linear(4, 3), forget, retain, test)
    >>> sorted(scores), all(0.0 <= v <= 1.0 for v in scores.values())
    (['mia_efficacy', 'mia_entropy', 'mia_loss'], True)
    """
    f, r, t = (sample_features(model, loader) for loader in (forget, retain, test))
    return {
        "mia_loss": simple_mia(f["loss"], t["loss"], seed=seed),
        "mia_entropy": simple_mia(f["entropy"], t["entropy"], seed=seed),
        "mia_efficacy": svc_mia_efficacy(r["confidence"], t["confidence"], f["confidence"], seed=seed),
    }
