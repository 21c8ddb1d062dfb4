"""Evaluation of an unlearned model: accuracies, membership inference, generative and
image-to-image metrics.

scikit-learn (attack models) and scipy (matrix square root) are needed by ``mia`` and
``frechet_distance``; install them with ``pip install fastunlearn[demo]``.
"""

from fastunlearn.eval.classifier import accuracies, accuracy, gaps, predict
from fastunlearn.eval.generative import feature_ratio, frechet_distance, sample_quality
from fastunlearn.eval.mia import attack_audit, membership_inference, sample_features, simple_mia, svc_mia_efficacy
from fastunlearn.eval.reconstruction import feature_distance, psnr, reconstruction_errors

__all__ = [
    "accuracies",
    "accuracy",
    "attack_audit",
    "feature_distance",
    "feature_ratio",
    "frechet_distance",
    "gaps",
    "membership_inference",
    "predict",
    "psnr",
    "reconstruction_errors",
    "sample_features",
    "sample_quality",
    "simple_mia",
    "svc_mia_efficacy",
]
