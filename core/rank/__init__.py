"""Which 2D classes are good: a calibrated probability per class, and a selection.

``features`` (class statistics and RELION-ranker-style image features), ``model`` (image scorer,
combiner, ``RankModel``), ``threshold`` (the data-set-adaptive cut), ``train`` (fitting and
fine-tuning), ``figures`` (the gallery).
"""
from .features import class_counts
from .model import EVIDENCE, RankModel, Scores
from .threshold import auto_threshold

__all__ = ["EVIDENCE", "RankModel", "Scores", "auto_threshold", "class_counts"]
