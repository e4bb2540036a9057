"""Evaluation of frozen encoders: weighted kNN, linear probes, checkpoint protocols, pair analysis."""

from amcl.eval.knn import knn_accuracy, knn_predict, topk_accuracies
from amcl.eval.linear import linear_probe, linear_probe_augmented
from amcl.eval.protocols import evaluate_checkpoint

__all__ = [
    "evaluate_checkpoint",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "linear_probe_augmented",
    "topk_accuracies",
]
