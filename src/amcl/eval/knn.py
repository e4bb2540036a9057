"""The weighted kNN classifier of frozen features (it lives in :mod:`amcl.knn`, below the methods, whose
online monitor uses it)."""

from amcl.knn import knn_accuracy, knn_predict, topk_accuracies

__all__ = ["knn_accuracy", "knn_predict", "topk_accuracies"]
