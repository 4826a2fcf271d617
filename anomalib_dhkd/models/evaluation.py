"""Evaluator shared by the plugin's models and its benchmarks.

anomalib's default evaluator has no validation metrics and no PRO. Models are compared here on threshold-free
metrics: image AUROC, pixel AUROC and PRO (anomalib's AUPRO, integrated up to a false-positive rate of 0.3).
F1 scores are reported too, but anomalib fits their threshold on the validation split, which for MVTec-style
datamodules is the test split itself.
"""

from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score


def default_evaluator(pro_fpr_limit: float = 0.3) -> Evaluator:
    """Build the family's evaluator: image AUROC for validation; image and pixel AUROC and F1, and PRO for testing.

    Validation skips pixel metrics: sorting every pixel of the test set after each epoch costs minutes on a CPU.

    Metric names in the results: ``image_AUROC``, ``image_F1Score``, ``pixel_AUROC``, ``pixel_F1Score``,
    ``pixel_AUPRO``.

    Args:
        pro_fpr_limit: False-positive-rate limit of the PRO integral.

    Returns:
        The evaluator, for a model's ``evaluator`` argument or ``configure_evaluator``.

    Example:
        >>> evaluator = default_evaluator()
        >>> [metric.name for metric in evaluator.val_metrics]
        ['image_AUROC']
        >>> [metric.name for metric in evaluator.test_metrics][-1]
        'pixel_AUPRO'

    """
    val_metrics = [AUROC(fields=["pred_score", "gt_label"], prefix="image_")]
    test_metrics = [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, fpr_limit=pro_fpr_limit),
    ]
    return Evaluator(val_metrics=val_metrics, test_metrics=test_metrics)
