"""AsymmetricTs: asymmetric teacher-student anomaly detection with an EMAN teacher and a CoT student.

Kong et al., "Asymmetric Teacher-Student Network Model for Industrial Image Anomaly Detection", Computer Science
51(11A), 2024: a frozen pretrained teacher with exponential-moving-average normalisation (EMAN, Cai et al., CVPR 2021,
Sec. 3), a student of another structure than the teacher's (the paper's residual blocks are Contextual Transformers,
CoT, Li et al., TPAMI 2022, Sec. 3.2; plain 3x3 blocks measured better and are the default), STFPM's loss and
multi-scale map fusion (:mod:`~.torch_model`, :mod:`~.loss`, :mod:`~.anomaly_map`). Guards, statistics fitting
and trainer arguments come from :class:`~anomalib_dhkd.models.base.KnowledgeDistillationModule`.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_dhkd import AsymmetricTs
    >>> model = AsymmetricTs(backbone="tf_efficientnet_lite0")  # offline ImageNet weights needed  # doctest: +SKIP
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
from anomalib_dhkd.models.asymmetric_ts.loss import AsymmetricTsLoss
from anomalib_dhkd.models.asymmetric_ts.torch_model import AsymmetricTsModel, ContextualStudentConfig
from anomalib_dhkd.models.base import KnowledgeDistillationModule, as_settings


class AsymmetricTs(KnowledgeDistillationModule, AnomalibModule):
    """Asymmetric teacher-student network.

    Args:
        backbone: timm backbone of the frozen teacher. ``tf_efficientnet_lite0`` has ImageNet weights offline
            (``python -m anomalib_dhkd.weights install``). Defaults to ``"wide_resnet50_2"``.
        layers: Teacher layers, one student scale each; ``None``: the backbone's deepest layers at strides 4, 8 and
            16. Defaults to ``None``.
        pre_trained: Load ImageNet weights into the teacher. Defaults to ``True``.
        student: Student settings (residual blocks per scale, plain or CoT blocks). Defaults to
            ``ContextualStudentConfig()``.
        eman_momentum: Share of the teacher's BatchNorm statistics kept per training step; ``1`` keeps ImageNet's.
            Defaults to ``0.999``.
        scoring: Anomaly map and image score settings; ``None`` values: every layer scores, plain map. Defaults to
            ``ScoringConfig()``.
        learning_rate: Adam learning rate of the student. Defaults to ``1e-3``.
        max_epochs: Training epochs. Defaults to ``20``.
        pre_processor: Pre-processor, or ``True``: resize to 256 px, normalise with the backbone's statistics.
        post_processor: Post-processor instance or flag to use the default. Defaults to ``True``.
        evaluator: Evaluator instance or flag to use the default (image AUROC; pixel AUROC and PRO when testing).
        visualizer: Visualizer instance or flag to use the default. Defaults to ``True``.

    Raises:
        ValueError: For an unknown layer name, ``eman_momentum`` outside ``[0, 1]``, or a backbone without BatchNorm
            layers.
        RuntimeError: If the ImageNet weights cannot be loaded.

    Example:
        The paper's student with CoT blocks (``pre_trained=False`` here only to run without the weights):

        >>> from anomalib_dhkd.models.asymmetric_ts import ContextualStudentConfig
        >>> student = ContextualStudentConfig(contextual=True)
        >>> model = AsymmetricTs(backbone="resnet18", pre_trained=False, student=student)
        >>> type(model.model.student.stages[0][-1].residual[0]).__name__
        'ContextualTransformer'

    """

    # The teacher is frozen (its EMAN statistics move without gradients).
    TRAINED_MODULES = ("student",)

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str] | None = None,
        pre_trained: bool = True,
        student: ContextualStudentConfig = ContextualStudentConfig(),  # noqa: B008 (frozen dataclass)
        eman_momentum: float = 0.999,
        scoring: ScoringConfig = ScoringConfig(),  # noqa: B008
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
        self.model = AsymmetricTsModel(
            backbone,
            list(layers or default_layers(backbone)),
            pre_trained,
            as_settings(ContextualStudentConfig, student),
            eman_momentum,
            as_settings(ScoringConfig, scoring),
        )
        self.loss = AsymmetricTsLoss()

    def training_losses(self, batch: Batch) -> Mapping[str, torch.Tensor | None]:
        """Return STFPM's distillation loss of a batch of normal images.

        Args:
            batch: Training batch of normal images.

        Returns:
            ``{"total": loss}``; the teacher's EMAN statistics move with the batch on the way.

        """
        return {"total": self.loss(*self.model(batch.image))}
