"""fastunlearn.eval.lm against straightforward implementations on small data."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

import fastunlearn as fu
from fastunlearn.eval import lm

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def random_case(seed: int, batch: int = 6, length: int = 9, vocab: int = 50):
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(batch, length, vocab, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, vocab, (batch, length), generator=gen)
    mask = torch.rand(batch, length, generator=gen) > 0.3
    mask[:, 0] = True  # every sequence counts a token
    return logits, targets, mask


def straight_scores(logits, targets, mask, k):
    """Per sequence, by Python loops over the float64 log-softmax."""
    logp = logits.log_softmax(-1)
    p = logp.exp()
    out = {"loss": [], "min_k": [], "min_k_plus_plus": []}
    for b in range(logits.shape[0]):
        token_logp, normalised = [], []
        for t in range(logits.shape[1]):
            if not mask[b, t]:
                continue
            lp = logp[b, t]
            mu = float((p[b, t] * lp).sum())
            sigma = math.sqrt(float((p[b, t] * (lp - mu) ** 2).sum()))
            token_logp.append(float(lp[targets[b, t]]))
            normalised.append((token_logp[-1] - mu) / sigma)
        count = max(1, int(len(token_logp) * k))
        out["loss"].append(sum(token_logp) / len(token_logp))
        out["min_k"].append(sum(sorted(token_logp)[:count]) / count)
        out["min_k_plus_plus"].append(sum(sorted(normalised)[:count]) / count)
    return {name: torch.tensor(values, dtype=torch.float64) for name, values in out.items()}


@pytest.mark.parametrize("k", [0.01, 0.2, 0.5, 1.0])
def test_membership_scores_match_the_definitions(k):
    logits, targets, mask = random_case(0)
    stats = fu.token_stats_from_logits(logits, targets, chunk_size=16)
    texts = [f"sample {i} " * (i + 1) for i in range(len(targets))]
    scores = lm.membership_scores(stats, mask, k=k, texts=texts)
    expected = straight_scores(logits, targets, mask, k)
    for name in ("loss", "min_k", "min_k_plus_plus"):
        torch.testing.assert_close(scores[name], expected[name], rtol=1e-5, atol=1e-5, msg=name)
    zlib_bytes = torch.tensor([len(zlib.compress(t.encode())) for t in texts], dtype=torch.float64)
    torch.testing.assert_close(scores["zlib"], expected["loss"] / zlib_bytes, rtol=1e-5, atol=1e-7)


def test_min_k_edges():
    stats = fu.token_stats_from_logits(torch.zeros(1, 4, 3), torch.zeros(1, 4, dtype=torch.long))
    stats = stats._replace(target_logprob=torch.tensor([[-1.0, -4.0, -2.0, -3.0]]))
    mask = torch.tensor([[True, True, True, False]])  # -3 is not counted
    assert float(lm.membership_scores(stats, mask, k=0.01)["min_k"]) == -4.0  # at least one token
    assert float(lm.membership_scores(stats, mask, k=0.7)["min_k"]) == -3.0  # floor(2.1) = 2: -4, -2
    assert float(lm.membership_scores(stats, mask, k=1.0)["min_k"]) == pytest.approx(-7 / 3)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="k must be"):
            lm.membership_scores(stats, mask, k=bad)
    with pytest.raises(ValueError, match="at least one counted token"):
        lm.membership_scores(stats, torch.zeros_like(mask), k=0.5)


def test_auc_and_tpr_at_fpr_match_sklearn():
    gen = torch.Generator().manual_seed(1)
    members = torch.randint(0, 12, (40,), generator=gen).double()  # integer scores: many ties
    nonmembers = torch.randint(0, 9, (60,), generator=gen).double()
    labels = [1] * 40 + [0] * 60
    scores = torch.cat([members, nonmembers]).tolist()
    assert lm.auc(members, nonmembers) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores))
    fpr, tpr, _ = sklearn_metrics.roc_curve(labels, scores)
    for target in (0.0, 0.01, 0.1, 0.25, 1.0):
        assert lm.tpr_at_fpr(members, nonmembers, target) == pytest.approx(max(tpr[fpr <= target]))
    assert lm.auc(members, nonmembers) > 0.5  # the members here score higher: the orientation


def test_privleak():
    assert lm.privleak(0.5, 0.5) == 0.0
    assert lm.privleak(0.75, 0.5) == pytest.approx(50.0)  # under-unlearned: members still stand out
    assert lm.privleak(0.4, 0.5) == pytest.approx(-20.0)


def test_answer_metrics():
    logits, targets, _ = random_case(2, batch=3, length=5, vocab=7)
    targets[0] = logits[0].argmax(-1)  # sequence 0: every answer token is the argmax
    answer = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    metrics = lm.answer_metrics(fu.token_stats_from_logits(logits, targets), answer)
    logp = logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    right = logits.argmax(-1) == targets
    for b in range(3):
        chosen = answer[b]
        assert float(metrics["probability"][b]) == pytest.approx(math.exp(float(logp[b][chosen].mean())), rel=1e-5)
        assert float(metrics["token_accuracy"][b]) == pytest.approx(float(right[b][chosen].double().mean()))
        assert float(metrics["accuracy"][b]) == float(bool(right[b][chosen].all()))
    assert float(metrics["accuracy"][0]) == 1.0


def test_causal_lm_stats_match_the_model_logits():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 97, (3, 10))
    labels = ids.clone()
    labels[:, :4] = -100  # the question
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    stats, mask = lm.causal_lm_stats(model, batch, chunk_size=10)
    with torch.no_grad():
        logp = model(input_ids=ids).logits[:, :-1].double().log_softmax(-1)
    assert torch.equal(mask, labels[:, 1:] != -100)
    expected = logp.gather(-1, labels[:, 1:].clamp_min(0)[..., None])[..., 0]
    torch.testing.assert_close(stats.target_logprob.double()[mask], expected[mask], rtol=0, atol=1e-5)
