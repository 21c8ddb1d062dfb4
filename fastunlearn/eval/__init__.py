"""Evaluation of an unlearned model: accuracies, membership inference, generative metrics.

scikit-learn (attack models) and scipy (matrix square root) are needed by ``mia`` and
``frechet_distance``; install them with ``pip install fastunlearn[demo]``.
"""

from fastunlearn.eval.classifier import accuracies, accuracy, gaps, predict
from fastunlearn.eval.generative import feature_ratio, frechet_distance, sample_quality
from fastunlearn.eval.mia import membership_inference, sample_features, simple_mia, svc_mia_efficacy

__all__ = [
    "accuracies",
    "accuracy",
    "feature_ratio",
    "frechet_distance",
    "gaps",
    "membership_inference",
    "predict",
    "sample_features",
    "sample_quality",
    "simple_mia",
    "svc_mia_efficacy",
]
