"""Dmdd: dual-modeling decouple distillation for anomaly detection.

Liu et al., "Dual-Modeling Decouple Distillation for Unsupervised Anomaly Detection", ACM MM 2024: a student whose
features are decoupled into normality and abnormality features, trained on pairs of normal images and copies with
synthetic anomalies on the object (normality guided mimicking, abnormality inverse mimicking), and a segmentation
head that turns both discrepancies into the anomaly map (:mod:`~.torch_model`, :mod:`~.loss`, :mod:`~.anomaly_map`).
Guards and trainer arguments come from :class:`~anomalib_dhkd.models.base.KnowledgeDistillationModule`.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_dhkd import Dmdd
    >>> model = Dmdd(backbone="tf_efficientnet_lite0")  # doctest: +SKIP
    >>> Engine().train(model=model, datamodule=MVTecAD(category="bottle"))  # doctest: +SKIP

"""

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer

from anomalib_dhkd.components.encoders import default_layers
from anomalib_dhkd.components.scoring.segmentation import MultiPerceptionHead
from anomalib_dhkd.components.synthesis import ForegroundAnomalies
from anomalib_dhkd.models.base import KnowledgeDistillationModule
from anomalib_dhkd.models.dmdd.loss import DmddLoss
from anomalib_dhkd.models.dmdd.torch_model import DmddModel
from anomalib_dhkd.models.network import use_channels_last

logger = logging.getLogger(__name__)


def resolve_head_epochs(max_epochs: int, head_epochs: int | None) -> int:
    """Return the head-only epochs of ``max_epochs``: ``head_epochs``, or a fifth of ``max_epochs`` if ``None``.

    Training the head on a student that still changes left it behind one trained on the finished student (on
    transistor by 4 to 7 points of image AUROC, pixel AUROC and PRO), so the default ends with head-only epochs.

    Example:
        >>> resolve_head_epochs(25, None), resolve_head_epochs(4, None), resolve_head_epochs(4, 1)
        (5, 0, 1)

    Raises:
        ValueError: If ``head_epochs`` is negative or leaves the student no epoch.

    """
    resolved = max_epochs // 5 if head_epochs is None else head_epochs
    if not 0 <= resolved < max_epochs:
        msg = (
            f"Dmdd's head_epochs must be at least 0 and below max_epochs ({max_epochs}), got {head_epochs}; "
            "head_epochs: 0 trains the student and head together in every epoch."
        )
        raise ValueError(msg)
    return resolved


class Dmdd(KnowledgeDistillationModule, AnomalibModule):
    """Dual-modeling decouple distillation.

    Args:
        backbone: timm backbone of the frozen teacher. ``tf_efficientnet_lite0`` has ImageNet weights offline
            (``python -m anomalib_dhkd.weights install``). Defaults to ``"wide_resnet50_2"``.
        layers: Teacher layers, one student scale each; ``None``: the backbone's deepest layers at strides 4, 8 and
            16. Defaults to ``None``.
        pre_trained: Load ImageNet weights into the teacher. Defaults to ``True``.
        anomaly_probability: Share of training images that get a synthetic anomaly on the object. Defaults to ``0.5``.
        anomaly_on_foreground: Paint the anomalies on the estimated object only; ``False``: anywhere, as DRAEM
            (ablation). Defaults to ``True``.
        anomaly_source_path: Folder of texture images for the anomalies (a DTD folder); ``None``: anomalib's
            Perlin-noise textures, which need no download. Defaults to ``None``.
        blur_sigma: Gaussian smoothing of the anomaly map in pixels; ``0``: none. Defaults to ``4.0``.
        score_fraction: The image score is the mean of this share of the map's highest values. Defaults to ``0.01``.
        normality_weight: Weight of normality-guided mimicking (NGM); ``0``: ablation without it. Defaults to ``1.0``.
        abnormality_weight: Weight of abnormality inverse mimicking (AIM); ``0``: ablation without it. Defaults to
            ``1.0``.
        segmentation_head: The map comes from the segmentation head; ``False`` (ablation): from the normality
            features' distances to the teacher's. Defaults to ``True``.
        normality_in_map: Multiply the head's probabilities by the normality discrepancy, so a position is
            anomalous only where both agree; ``False`` (ablation): the head alone. Defaults to ``True``.
        multi_perception: The head sees spatial context (residual block, CBAM attention, dilated convolutions), as
            the paper's multi-perception network; ``False``: it fuses the discrepancies at each position alone, which
            carried over from synthetic to real anomalies more reliably. Defaults to ``False``.
        learning_rate: Adam learning rate of the student, decouplers and head. Defaults to ``1e-3``.
        max_epochs: Training epochs, the head-only epochs included. Defaults to ``25``.
        head_epochs: The last epochs of ``max_epochs`` in which only the head learns, on the maps of the finished
            student in evaluation mode (two-stage training); ``0``: everything learns in every epoch (joint
            training); ``None``: a fifth of ``max_epochs`` (5 of 25; none below 5 epochs). Defaults to ``None``.
        pre_processor: Pre-processor, or ``True``: resize to 256 px, normalise with the backbone's statistics.
        post_processor: Post-processor instance or flag to use the default. Defaults to ``True``.
        evaluator: Evaluator instance or flag to use the default (image AUROC; pixel AUROC and PRO when testing).
        visualizer: Visualizer instance or flag to use the default. Defaults to ``True``.

    Example:
        >>> model = Dmdd(backbone="resnet18", pre_trained=False, max_epochs=10)
        >>> list(model.model.teacher.layers), model.trainer_arguments["max_epochs"], model.head_epochs
        (['layer1', 'layer2', 'layer3'], 10, 2)

    """

    # The teacher is frozen.
    TRAINED_MODULES = ("student", "decouplers", "head")

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str] | None = None,
        pre_trained: bool = True,
        anomaly_probability: float = 0.5,
        anomaly_source_path: str | None = None,
        anomaly_on_foreground: bool = True,
        blur_sigma: float = 4.0,
        score_fraction: float = 0.01,
        normality_weight: float = 1.0,
        abnormality_weight: float = 1.0,
        segmentation_head: bool = True,
        normality_in_map: bool = True,
        multi_perception: bool = False,
        learning_rate: float = 1e-3,
        max_epochs: int = 25,
        head_epochs: int | None = None,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            backbone=backbone,
            max_epochs=max_epochs,
            learning_rate=learning_rate,
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.head_epochs = resolve_head_epochs(max_epochs, head_epochs)
        layers = list(layers or default_layers(backbone))
        self.model = DmddModel(
            backbone,
            layers,
            pre_trained,
            blur_sigma,
            score_fraction,
            segmentation_head,
            normality_in_map,
            multi_perception,
        )
        self.anomalies = ForegroundAnomalies(
            anomaly_source_path, anomaly_probability, on_foreground=anomaly_on_foreground
        )
        self.loss = DmddLoss(normality_weight, abnormality_weight)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Give a checkpoint saved before ``multi_perception`` existed its multi-perception head, before it loads.

        Args:
            checkpoint: The loaded checkpoint; its hyper-parameters gain ``multi_perception: True``.

        """
        hyper_parameters = checkpoint.get("hyper_parameters", {})
        if "multi_perception" not in hyper_parameters and "model.head.stem.0.weight" in checkpoint["state_dict"]:
            logger.info("Dmdd checkpoint from before the per-position head: its multi-perception head is kept.")
            self.model.head = use_channels_last(MultiPerceptionHead(2 * len(self.model.decouplers)))
            hyper_parameters["multi_perception"] = True
            self.hparams["multi_perception"] = True
        super().on_load_checkpoint(checkpoint)

    @property
    def training_student(self) -> bool:
        """Whether the student still learns: not in the last ``head_epochs`` epochs, where only the head does."""
        return self.current_epoch < self.max_epochs - self.head_epochs

    def training_losses(self, batch: Batch) -> Mapping[str, torch.Tensor | None]:
        """Return Dmdd's loss and its terms for normal images and their copies with synthetic anomalies."""
        augmented, masks = self.synthesize_anomalies(batch.image, self.anomalies)
        outputs = self.model(batch.image, augmented=augmented, masks=masks, train_student=self.training_student)
        return self.loss(*outputs)._asdict()
