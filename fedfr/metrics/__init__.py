"""Face-recognition metrics, numpy only: 1:1 verification and 1:N identification.

Verification (:mod:`fedfr.metrics.verification`): threshold-free ROC, TAR@FAR and the matching
decision threshold, EER, AUC, the LFW 10-fold accuracy and a bundled report. Identification
(:mod:`fedfr.metrics.identification`): templates, cosine similarity, closed-set rank-k / CMC and
open-set DIR@FPIR.
"""

from fedfr.metrics.identification import (
    build_templates,
    cmc_curve,
    cosine_similarity_matrix,
    dir_at_fpir,
    dir_fpir_curve,
    identification_report,
    l2_normalize,
    rank1_accuracy,
    rank_k_accuracy,
)
from fedfr.metrics.verification import (
    DEFAULT_FARS,
    best_accuracy_threshold,
    eer,
    impostor_threshold,
    kfold_best_accuracy,
    pair_scores,
    roc_auc,
    roc_curve,
    tar_at_far,
    tar_far_table,
    threshold_at_far,
    verification_report,
)

__all__ = [
    "DEFAULT_FARS",
    "best_accuracy_threshold",
    "build_templates",
    "cmc_curve",
    "cosine_similarity_matrix",
    "dir_at_fpir",
    "dir_fpir_curve",
    "eer",
    "identification_report",
    "impostor_threshold",
    "kfold_best_accuracy",
    "l2_normalize",
    "pair_scores",
    "rank1_accuracy",
    "rank_k_accuracy",
    "roc_auc",
    "roc_curve",
    "tar_at_far",
    "tar_far_table",
    "threshold_at_far",
    "verification_report",
]
