"""Evaluation: the weighted kNN monitor."""

from amcl.eval.knn import knn_accuracy, knn_predict

__all__ = ["knn_accuracy", "knn_predict"]
