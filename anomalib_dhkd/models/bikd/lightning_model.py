"""Bikd: bidirectional knowledge distillation for anomaly detection.

Wang et al., "Unsupervised anomaly detection and localization via bidirectional knowledge distillation", Neural
Computing and Applications 36, 2024: forward KD (a student regresses the teacher's features from the image), backward
KD (a decoder reconstructs them from a one-class bottleneck) and a reciprocal exchange between the two
(:mod:`~.torch_model`, :mod:`~.loss`, :mod:`~.anomaly_map`). Guards, statistics fitting and trainer arguments come
from :class:`~anomalib_dhkd.models.base.KnowledgeDistillationModule`.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_dhkd import Bikd
    >>> model = Bikd(backbone="tf_efficientnet_lite0")  # doctest: +SKIP
    >>> Engine().train(model=model, datamodule=MVTecAD(category="bottle"))  # doctest: +SKIP

"""

from collections.abc import Mapping, Sequence

import torch
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer

from anomalib_dhkd.components.encoders import default_layers
from anomalib_dhkd.components.scoring import ScoringConfig
from anomalib_dhkd.components.synthesis import ForegroundAnomalies
from anomalib_dhkd.models.base import KnowledgeDistillationModule, as_settings
from anomalib_dhkd.models.bikd.anomaly_map import DIRECTIONS
from anomalib_dhkd.models.bikd.loss import BikdLoss
from anomalib_dhkd.models.bikd.torch_model import BikdModel


class Bikd(KnowledgeDistillationModule, AnomalibModule):
    """Bidirectional knowledge distillation.

    Args:
        backbone: timm backbone of the frozen teacher and of the forward student. ``tf_efficientnet_lite0`` has
            ImageNet weights offline (``python -m anomalib_dhkd.weights install``). Defaults to ``"wide_resnet50_2"``.
        layers: Teacher layers, one scale each; ``None``: the backbone's deepest layers at strides 4, 8 and 16.
            Defaults to ``None``.
        pre_trained: Load ImageNet weights into the teacher. Defaults to ``True``.
        exchange_weight: Weight of a consistency term between the forward student's and the reverse decoder's
            outputs; ``0``: none. It measured worse than the feature exchange (model README). Defaults to ``0.0``.
        anomaly_probability: Share of training images that get a synthetic anomaly on the object, which the students
            learn to undo; ``0``: none. Defaults to ``0.5``.
        anomaly_source_path: Folder of texture images for the anomalies (a DTD folder); ``None``: anomalib's
            Perlin-noise textures, which need no download. Defaults to ``None``.
        directions: The branches to build and train, ``"forward"`` and/or ``"reverse"``; one alone is an ablation
            (then there is no exchange). Defaults to both.
        feature_exchange: With both directions, the reverse bottleneck embeds the forward student's features instead
            of the teacher's, so the reverse loss trains the forward student too. Defaults to ``True``.
        scoring: Anomaly map and image score settings; layer names are ``forward.<layer>`` and ``reverse.<layer>``;
            ``None`` values: every scale of both directions scores, plain map. Defaults to ``ScoringConfig()``.
        learning_rate: Adam learning rate of the forward student, bottleneck and decoder. Defaults to ``1e-3``.
        max_epochs: Training epochs. Defaults to ``20``.
        pre_processor: Pre-processor, or ``True``: resize to 256 px, normalise with the backbone's statistics.
        post_processor: Post-processor instance or flag to use the default. Defaults to ``True``.
        evaluator: Evaluator instance or flag to use the default (image AUROC; pixel AUROC and PRO when testing).
        visualizer: Visualizer instance or flag to use the default. Defaults to ``True``.

    Example:
        >>> model = Bikd(backbone="resnet18", pre_trained=False, max_epochs=2)
        >>> list(model.model.teacher.layers), model.trainer_arguments["max_epochs"]
        (['layer1', 'layer2', 'layer3'], 2)

    """

    # The teacher is frozen.
    TRAINED_MODULES = ("forward_student", "bottleneck", "decoder")

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str] | None = None,
        pre_trained: bool = True,
        exchange_weight: float = 0.0,
        anomaly_probability: float = 0.5,
        anomaly_source_path: str | None = None,
        directions: Sequence[str] = DIRECTIONS,
        feature_exchange: bool = True,
        scoring: ScoringConfig = ScoringConfig(),  # noqa: B008 (frozen dataclass)
        learning_rate: float = 1e-3,
        max_epochs: int = 20,
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
        layers = list(layers or default_layers(backbone))
        self.model = BikdModel(
            backbone, layers, pre_trained, as_settings(ScoringConfig, scoring), directions, feature_exchange
        )
        self.loss = BikdLoss(exchange_weight)
        self.anomalies = ForegroundAnomalies(anomaly_source_path, anomaly_probability) if anomaly_probability else None

    def training_losses(self, batch: Batch) -> Mapping[str, torch.Tensor | None]:
        """Return Bikd's loss and its terms for a batch of normal images (with synthetic anomalies, if any)."""
        augmented = None if self.anomalies is None else self.synthesize_anomalies(batch.image, self.anomalies)[0]
        return self.loss(*self.model(batch.image, augmented=augmented))._asdict()
