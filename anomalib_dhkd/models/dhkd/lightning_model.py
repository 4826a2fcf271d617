"""DHKD: Denoising Heterogeneous Knowledge Distillation for anomaly detection.

A normalizing-flow teacher models the density of normal features; a feed-forward, dual-domain (spatial +
frequency) student learns to reproduce the teacher's latent from noisy features. Their discrepancy is the anomaly
map. See :mod:`anomalib_dhkd.models.dhkd.torch_model` for the architecture and
:mod:`anomalib_dhkd.models.dhkd.loss` for the objective.

Training schedule: for the first ``teacher_warmup_epochs`` epochs only the teacher is trained (maximum likelihood)
and the students do not run, so that the student never distils a random flow. After that, with ``freeze_teacher``
(the default), the teacher is frozen and only the student is distilled against its latents, in two stages as AST
(Rudolph et al., WACV 2023) trains its flow teacher before its student; without it, teacher and student train
jointly, the student against the detached teacher latent. Before each validation of a fit, one pass over the
training images fits the per-position discrepancy statistics that standardise the image score (and, optionally, the
map), so that the post-processor's thresholds are fitted on the scores the model will give. ``max_epochs`` is a
model argument because anomalib applies the model's ``trainer_arguments`` over the trainer's (``anomalib benchmark``
passes no trainer settings at all).

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_dhkd import Dhkd
    >>> model = Dhkd(backbone="tf_efficientnet_lite0", layers=("blocks.1", "blocks.2", "blocks.4"))
    >>> engine = Engine()
    >>> engine.train(model=model, datamodule=MVTecAD(category="bottle"))  # doctest: +SKIP

"""

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import timm
import torch
from anomalib import LearningType
from anomalib.data import AnomalibDataModule, Batch
from anomalib.deploy import CompressionType
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch import Callback
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import optim
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_dhkd.callbacks import RandomStateCheckpoint
from anomalib_dhkd.evaluation import default_evaluator
from anomalib_dhkd.models.dhkd.loss import DhkdLoss
from anomalib_dhkd.models.dhkd.torch_model import DhkdModel
from anomalib_dhkd.quantization import calibration_dataset, encoder_only_scope

logger = logging.getLogger(__name__)

# Exported ops of DhkdModel.feature_norms (torch's `_native_batch_norm_legit_no_training`): the encoder's outputs.
# The encoder's own batch norms are folded into its convolutions on export and leave no op with this name.
FEATURE_TAP_NAME = "batch_norm"


def check_finite_images(batch: Batch) -> None:
    """Raise a one-line ``ValueError`` naming the images of ``batch`` that contain NaN or infinite values.

    A non-finite pixel (from a custom datamodule or transform) would otherwise only surface as a non-finite loss
    term, with no hint of which image caused it.
    """
    finite = torch.isfinite(batch.image).flatten(1).all(dim=1)
    if bool(finite.all()):
        return
    paths = list(batch.image_path or [])
    names = [str(paths[i]) if i < len(paths) else f"batch item {i}" for i in (~finite).nonzero().flatten().tolist()]
    msg = (
        f"Input image(s) with NaN or infinite pixel values: {', '.join(names)}. Check the datamodule's transforms "
        "and the image files (python -m anomalib_dhkd.check ROOT)."
    )
    raise ValueError(msg)


class Dhkd(AnomalibModule):
    """Denoising Heterogeneous Knowledge Distillation.

    Args:
        backbone: timm backbone of the frozen encoder. ``tf_efficientnet_lite0`` has ImageNet weights offline
            (``python -m anomalib_dhkd.weights install``); use its layers ``blocks.1``, ``blocks.2``,
            ``blocks.4``. Defaults to ``"wide_resnet50_2"``.
        layers: Three encoder layers, one teacher-student pair each, fused into the anomaly map. Defaults to
            ``("layer1", "layer2", "layer3")``.
        pre_trained: Load ImageNet weights into the encoder. ``False`` trains on a random frozen encoder.
            Defaults to ``True``.
        score_layers: Encoder layers whose per-position standardised discrepancies are averaged into the image score
            (our choice; the paper does not say). A layer not in ``layers`` gets a teacher-student pair of its own
            that the map does not use: a deeper scale helps the score and blurs the map. EfficientNet-Lite0 on
            Magnetic Tile, image AUROC after 6 epochs with ``blocks.4``, ``blocks.6`` and both: 0.892, 0.922 and
            0.929, while adding ``blocks.6`` to the map lowered PRO from 0.749 to 0.630. ``None``: the deepest of
            ``layers`` with ImageNet weights, all of them without (bottle without ImageNet weights: 0.921 and
            0.991). :func:`~anomalib_dhkd.models.offline_dhkd` uses ``("blocks.4", "blocks.6")`` with ImageNet
            weights. Defaults to ``None``.
        flow_blocks: Affine coupling blocks per teacher flow. Defaults to ``4``.
        flow_hidden_ratio: Width of the coupling sub-networks relative to their input. Defaults to ``1.0``.
        flow_clamp: Soft-clamping bound of the coupling log-scales. Defaults to ``2.0``.
        condition_channels: Channels of the positional encoding the flows are conditioned on, a multiple of 4;
            ``0`` disables conditioning. On MVTec bottle (EfficientNet-Lite0, 8 epochs) conditioning raised pixel
            AUROC from 0.966 to 0.977 and PRO from 0.861 to 0.896. Defaults to ``64``.
        student_blocks: Dual-domain reconstruction blocks per student. Magnetic Tile with ImageNet weights, image /
            pixel AUROC / PRO with 2 and 1, mean of seeds 0-2: 0.937 / 0.777 / 0.746 and 0.940 / 0.778 / 0.751;
            without them 0.649 / 0.603 / 0.371 and 0.653 / 0.612 / 0.403.
            :func:`~anomalib_dhkd.models.offline_dhkd` uses 1 with either encoder (model README). Defaults to
            ``2``, unmeasured on other backbones.
        noise_level: Standard deviation of the Gaussian noise added to the student's training input, relative to
            each channel's standard deviation. A random encoder gains from more (``RANDOM_ENCODER_PRESET`` uses
            ``1.0``); with ImageNet weights more trades pixel AUROC for PRO (model README). Defaults to ``0.5``.
        noise_correlation: Spatial correlation length, in feature cells, of the student's training noise; ``0``:
            independent at every position. The paper says only "Gaussian noise"; correlated noise perturbs
            neighbouring cells together, as a defect does, so the student must restore a whole region from its
            surroundings. Magnetic Tile with ImageNet weights, image / pixel AUROC / PRO at 0 and 1, mean of seeds
            0-2: 0.941 / 0.751 / 0.739 and 0.937 / 0.777 / 0.746; without ImageNet weights (one block per student)
            0.653 / 0.612 / 0.403 and 0.659 / 0.630 / 0.414 (model README). Defaults to ``1.0``.
        teacher_noise_level: Standard deviation of the dequantisation noise added to the teacher's
            maximum-likelihood input, relative likewise; the student still distils the teacher's latent of the clean
            features. Our choice (dequantisation, as in density models), not the paper's. 4 epochs, seed 0, image /
            pixel AUROC / PRO at 0 and 0.3: MVTec bottle 0.994 / 0.981 / 0.915 and 0.999 / 0.985 / 0.949; Magnetic
            Tile 0.777 / 0.716 / 0.658 and 0.737 / 0.756 / 0.741. It also lets the encoder run in INT8 (see
            :meth:`_post_training_quantization_ov`). Without ImageNet weights it hurts: bottle with
            ``pre_trained=False``, 0.3 and 0, 0.852 / 0.634 / 0.394 and 0.874 / 0.817 / 0.612. ``None`` picks 0.3 with
            ImageNet weights and 0 without. Defaults to ``None``.
        distillation_weight: Weight of the student-to-teacher regression loss. Defaults to ``1.0``.
        affinity_weight: Weight of the teacher-student affinity loss. Defaults to ``1.0``.
        jacobian_weight: Weight of the teacher's log-determinant regulariser. Defaults to ``0.01``.
        blur_sigma: Gaussian smoothing of the anomaly map in pixels. Defaults to ``4.0``.
        score_blur_sigma: Gaussian smoothing of the map the image score is taken from; ``None``: ``blur_sigma``. A
            random encoder's map gains from heavier smoothing than its score does (see
            :data:`~anomalib_dhkd.models.dhkd.presets.RANDOM_ENCODER_PRESET`). Defaults to ``None``.
        score_fraction: The image score is the mean of this share of the highest values of the smoothed score map
            (``score_layers``; our choice, the paper does not say). 4 epochs, seed 0, image AUROC with the maximum
            of the fused map and with the top 1 % of the deepest scale, re-scoring one trained model: Magnetic Tile
            0.750 and 0.886, MVTec bottle 0.999 and 1.000 (benchmark suite, trained anew: Magnetic Tile 0.737 and
            0.859).
            Defaults to ``0.01``.
        standardize_map: Build the anomaly map from discrepancies standardised per position with statistics of the
            training images, as the image score is. Re-scoring trained models (pixel AUROC / PRO, raw and
            standardised): bottle 0.985 / 0.949 and 0.977 / 0.911, bottle with ``pre_trained=False`` 0.634 / 0.394
            and 0.785 / 0.646. ``None`` standardises without ImageNet weights only. Defaults to ``None``.
        global_score: Add to the local image score, per score layer, the Mahalanobis distance of the teacher
            latent's per-channel means and standard deviations over the image to those of normal images, each source
            standardised on the training images (our addition; ``ImageScoreFusion`` in ``anomaly_map.py``; one more
            inference pass over the training images). :func:`~anomalib_dhkd.models.offline_dhkd` on Magnetic Tile
            with ImageNet weights, image AUROC without and with it, mean of seeds 0-2: 0.940 and 0.965 (+2.4 to +2.6
            points in every seed); bottle stays at 1.000; the demo's unaligned brick crops 1.000 and 0.990. Without
            ImageNet weights it hurts: bottle 0.983 and 0.881, Magnetic Tile 0.668 and 0.596 (model README).
            ``None``: only with ImageNet weights. The anomaly map is unchanged. Defaults to ``None``.
        coherence_layers: Trained layers (of ``layers`` or ``score_layers``) whose discrepancy coherence
            ``mean_c (avg S - T)^2 / avg mean_c (S - T)^2`` over a neighbourhood is added to the anomaly map (our
            addition; ``MapCoherence`` in ``anomaly_map.py``). A defect that shifts a large region a little (uneven
            lighting) leaves small but alike misses there. ``None``: the deepest of ``layers``;
            :func:`~anomalib_dhkd.models.offline_dhkd` also takes the score-only ``blocks.6``. Defaults to ``None``.
        coherence_weight: Weight of each coherence layer's smoothed coherence map, times the local map's standard
            deviation on the training images over the coherence map's; one for all layers or one per layer.
            :func:`~anomalib_dhkd.models.offline_dhkd` (``blocks.4`` at 0.15, ``blocks.6`` at 0.25) in the benchmark
            suite, seeds 0-2, pixel AUROC / PRO without and with it: Magnetic Tile 0.778 / 0.751 and 0.807 / 0.768
            (mean), up in every seed; MVTec bottle PRO -0.6 to -0.8 points (model README, "Discrepancy coherence").
            Without ImageNet weights it hurt (``blocks.4`` at 0.25,
            seed 0, pixel AUROC / PRO: Magnetic Tile +0.6 / -0.8 points, MVTec bottle -0.9 / -2.5). ``0``: none;
            ``None``: 0.25 with ImageNet weights, 0 without. Defaults to ``None``.
        coherence_window: Side of the coherence neighbourhood in cells of the deepest of ``layers``, odd (7: 112 px
            at stride 16); other coherence layers span the same pixels, rounded down to an odd number of cells
            (3 at stride 32). Defaults to ``7``.
        learning_rate: Adam learning rate. Defaults to ``1e-3``.
        teacher_warmup_epochs: Epochs during which only the teacher trains. Defaults to ``2``.
        freeze_teacher: Freeze the teacher after the warm-up and train only the student (two-stage training);
            ``False`` trains both jointly after the warm-up. A frozen teacher costs one gradient-free pass per step
            instead of two passes and a backward pass. EfficientNet-Lite0 with ImageNet weights, seed 0, image AUROC /
            pixel AUROC / PRO and training seconds on 2 CPU cores: Magnetic Tile, 4 teacher + 4 student epochs
            0.934 / 0.760 / 0.739 in 563 s, against 1 + 5 joint epochs' 0.927 / 0.756 / 0.754 in 774 s; MVTec
            bottle, 2 + 4 epochs 1.000 / 0.985 / 0.946 in 124 s, against the same figures in 210 s. Needs
            ``teacher_warmup_epochs >= 1``. Defaults to ``True``.
        max_epochs: Training epochs (teacher warm-up included). Defaults to ``10``.
        pre_processor: Pre-processor, or ``True`` for the default: resize to 256 px and normalise with the
            backbone's pretrained mean and standard deviation. Defaults to ``True``.
        post_processor: Post-processor instance or flag to use the default. Defaults to ``True``.
        evaluator: Evaluator instance or flag to use the default (image AUROC and F1, pixel AUROC and F1, PRO;
            image AUROC during validation). Defaults to ``True``.
        visualizer: Visualizer instance or flag to use the default. Defaults to ``True``.

    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        score_layers: Sequence[str] | None = None,
        flow_blocks: int = 4,
        flow_hidden_ratio: float = 1.0,
        flow_clamp: float = 2.0,
        condition_channels: int = 64,
        student_blocks: int = 2,
        noise_level: float = 0.5,
        noise_correlation: float = 1.0,
        teacher_noise_level: float | None = None,
        distillation_weight: float = 1.0,
        affinity_weight: float = 1.0,
        jacobian_weight: float = 0.01,
        blur_sigma: float = 4.0,
        score_blur_sigma: float | None = None,
        score_fraction: float = 0.01,
        standardize_map: bool | None = None,
        global_score: bool | None = None,
        coherence_layers: Sequence[str] | None = None,
        coherence_weight: float | Sequence[float] | None = None,
        coherence_window: int = 7,
        learning_rate: float = 1e-3,
        teacher_warmup_epochs: int = 2,
        freeze_teacher: bool = True,
        max_epochs: int = 10,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(backbone=backbone)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        if not 0 <= teacher_warmup_epochs < max_epochs:
            msg = f"teacher_warmup_epochs must be in [0, max_epochs), got {teacher_warmup_epochs} and {max_epochs}."
            raise ValueError(msg)
        if freeze_teacher and teacher_warmup_epochs == 0:
            msg = "freeze_teacher=True needs teacher_warmup_epochs >= 1, or the teacher never trains; set one of them."
            raise ValueError(msg)
        self.learning_rate = learning_rate
        self._statistics_step: int | None = None  # global step at which the normal-image statistics were fitted
        self.teacher_warmup_epochs = teacher_warmup_epochs
        self.freeze_teacher = freeze_teacher
        self.max_epochs = max_epochs
        self.model = DhkdModel(
            backbone=backbone,
            layers=list(layers),
            pre_trained=pre_trained,
            score_layers=None if score_layers is None else list(score_layers),
            flow_blocks=flow_blocks,
            flow_hidden_ratio=flow_hidden_ratio,
            flow_clamp=flow_clamp,
            condition_channels=condition_channels,
            student_blocks=student_blocks,
            noise_level=noise_level,
            noise_correlation=noise_correlation,
            teacher_noise_level=teacher_noise_level,
            blur_sigma=blur_sigma,
            score_blur_sigma=score_blur_sigma,
            score_fraction=score_fraction,
            standardize_map=standardize_map,
            global_score=global_score,
            coherence_layers=coherence_layers,
            coherence_weight=coherence_weight,
            coherence_window=coherence_window,
        )
        self.loss = DhkdLoss(
            distillation_weight=distillation_weight,
            affinity_weight=affinity_weight,
            jacobian_weight=jacobian_weight,
        )

    @classmethod
    def configure_pre_processor(
        cls,
        image_size: tuple[int, int] | None = None,
        backbone: str = "wide_resnet50_2",
    ) -> PreProcessor:
        """Resize to ``image_size`` (default 256 x 256) and normalise with the backbone's pretrained statistics."""
        config = timm.get_pretrained_cfg(backbone)
        mean, std = (config.mean, config.std) if config else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        return PreProcessor(
            transform=Compose([Resize(image_size or (256, 256), antialias=True), Normalize(mean=mean, std=std)]),
        )

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Image AUROC for validation; image AUROC and F1, pixel AUROC and F1, and PRO for testing."""
        return default_evaluator()

    def configure_optimizers(self) -> optim.Adam:
        """Adam over the teacher flows and the students; the encoder is frozen."""
        parameters = [*self.model.teachers.parameters(), *self.model.students.parameters()]
        return optim.Adam(parameters, lr=self.learning_rate, weight_decay=1e-5)

    @property
    def training_student(self) -> bool:
        """Whether the teacher warm-up is over and the student is being distilled."""
        return self.current_epoch >= self.teacher_warmup_epochs

    @property
    def training_teacher(self) -> bool:
        """Whether the teacher is being trained: always, or only during the warm-up with ``freeze_teacher``."""
        return not self.freeze_teacher or self.current_epoch < self.teacher_warmup_epochs

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Compute the DHKD loss of a batch of normal images.

        Raises:
            ValueError: If an input image contains NaN or infinite values, naming the image paths.
            FloatingPointError: As soon as a loss term is not finite, naming the term, epoch and step.

        """
        del args, kwargs  # These variables are not used.
        check_finite_images(batch)
        schedule = {"train_teacher": self.training_teacher, "train_student": self.training_student}
        terms = self.loss(*self.model(batch.image, **schedule), **schedule)
        computed = {name: value for name, value in terms._asdict().items() if value is not None}
        for name, value in computed.items():
            if not math.isfinite(value.item()):
                msg = (
                    f"DHKD loss term '{name}' became {value.item()} at epoch {self.current_epoch}, step "
                    f"{self.global_step}. Lower learning_rate or flow_clamp, or check the input images."
                )
                raise FloatingPointError(msg)
        batch_size = batch.image.shape[0]
        self.log_dict({f"train_{name}": value for name, value in computed.items()}, batch_size=batch_size)
        self.log("train_loss", terms.total, on_epoch=True, prog_bar=True, batch_size=batch_size)
        return {"loss": terms.total}

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Predict anomaly maps and scores of a validation batch."""
        del args, kwargs  # These variables are not used.
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    def on_validation_start(self) -> None:
        """During a fit, fit the normal-image statistics of the current weights before validation scores anything."""
        if self.trainer.state.fn == TrainerFn.FITTING and self._statistics_step != self.global_step:
            self.fit_normal_statistics()

    def fit_normal_statistics(self) -> None:
        """Fit the statistics of normal images that scoring uses on the training images (all processes).

        One inference pass over the training images, two with ``global_score`` or a ``coherence_weight``
        (:meth:`~anomalib_dhkd.models.dhkd.torch_model.DhkdModel.fit_normal_statistics`).
        """
        logger.info("DHKD: fitting the statistics of normal images on the training images.")
        strategy = self.trainer.strategy
        with torch.inference_mode(False):  # the statistics are buffers used later outside inference mode
            self.model.fit_normal_statistics(
                lambda: self._training_images(self.trainer.train_dataloader),
                sum_across_processes=lambda t: strategy.reduce(t, reduce_op="sum"),
            )
        self._statistics_step = self.global_step

    def _training_images(self, loader: Any) -> Iterator[torch.Tensor]:
        """Pre-processed image batches of ``loader`` on the model's device, as training saw them."""
        transform = getattr(self.pre_processor, "transform", None)
        for batch in loader:
            images = batch.image.to(self.device)
            yield transform(images) if transform else images

    def _compress_ov_model(
        self,
        model: Any,
        compression_type: CompressionType | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """Refuse ``INT8_ACQ``; ``INT8_PTQ`` quantises the encoder only, ``INT8`` and ``FP16`` go through anomalib.

        NNCF's accuracy-controlled search starts from a fully quantised model, which OpenVINO cannot compile for
        DHKD (see :meth:`_post_training_quantization_ov`), and anomalib gives it no ignored scope.

        Raises:
            ValueError: For ``INT8_ACQ``.

        """
        if compression_type == CompressionType.INT8_ACQ:
            msg = (
                "DHKD does not support INT8_ACQ export: INT8 activations in its flow teacher break the scores (see "
                "Dhkd._post_training_quantization_ov). Use INT8_PTQ, which quantises the encoder only, or FP16."
            )
            raise ValueError(msg)
        return super()._compress_ov_model(model, compression_type, *args, **kwargs)

    def _post_training_quantization_ov(self, model: Any, datamodule: AnomalibDataModule | None = None) -> Any:
        """INT8 post-training quantisation of the encoder; teacher, student and post-processing stay in FP32.

        The flow teacher is built to amplify deviations of its input features (Sec. 3 of the paper: maximise
        ``Diff(T(I), T(I'))``), and INT8 rounding anywhere after the encoder is such a deviation. Measured on
        MVTec bottle (OpenVINO 2026.4, NNCF 3.4, calibrated on the validation images) with ``teacher_noise_level=0``:
        NNCF's default full quantisation does not compile on OpenVINO's CPU plugin ("unexpected levels 75 for
        precision i8"); INT8 teacher and student collapse every normalised score to one value. Quantising the
        encoder only works once the teacher is trained on dequantised features (``teacher_noise_level``). Image /
        pixel AUROC of the FP32 and this INT8 export: 0.994 / 0.981 and 0.500 / 0.670 without teacher noise,
        0.999 / 0.985 and 0.999 / 0.979 with ``teacher_noise_level=0.3`` (``benchmarks/deployment.py``). The offline
        preset's score-only ``blocks.6`` pair scores 1.000 / 0.985 and 0.960 / 0.976: the exporter folds that
        pair's feature tap into ``blocks.6``'s last convolution, so ``blocks.5``-``blocks.6`` stay FP32
        (:func:`~anomalib_dhkd.quantization.encoder_only_scope`), but their input carries the INT8 rounding below.

        Raises:
            ValueError: If no datamodule is given to calibrate on.

        """
        import nncf

        if datamodule is None:
            msg = "INT8_PTQ export needs a datamodule: its validation images calibrate the quantiser."
            raise ValueError(msg)
        scope = encoder_only_scope(model, tap_name=FEATURE_TAP_NAME, num_taps=len(self.model.teachers))
        return nncf.quantize(model, calibration_dataset(model, datamodule), ignored_scope=scope)

    def setup(self, stage: str) -> None:
        """Let DDP tolerate the students' parameters, which get no gradient during the teacher warm-up.

        The teachers' parameters get none once they are frozen, which needs a warm-up too.

        Without ``find_unused_parameters``, ``--trainer.strategy ddp`` stops at the first step of the warm-up.
        """
        del stage  # The same for every stage.
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy) and self.teacher_warmup_epochs > 0:
            strategy._ddp_kwargs.setdefault("find_unused_parameters", True)  # Lightning has no public setter

    def configure_callbacks(self) -> list[Callback]:
        """Add a checkpoint of the random generators to anomalib's callbacks (pre-/post-processor, evaluator, ...).

        With it, a run resumed with ``ckpt_path`` continues exactly like the uninterrupted run.
        """
        callbacks = super().configure_callbacks()
        return [*(callbacks if isinstance(callbacks, Sequence) else [callbacks]), RandomStateCheckpoint()]

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Train for ``max_epochs`` with gradient-norm clipping at 1 (flow training stability)."""
        return {
            "max_epochs": self.max_epochs,
            "gradient_clip_val": 1.0,
            "gradient_clip_algorithm": "norm",
            "num_sanity_val_steps": 0,
        }

    @property
    def learning_type(self) -> LearningType:
        """DHKD learns from normal images only."""
        return LearningType.ONE_CLASS
