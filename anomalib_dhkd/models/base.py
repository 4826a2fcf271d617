"""Base Lightning module of the plugin's knowledge-distillation models: everything a model of the family needs once.

A model subclasses :class:`KnowledgeDistillationModule` and then anomalib's ``AnomalibModule`` (anomalib finds models
by name among the *direct* subclasses of ``AnomalibModule``), builds its torch model in ``self.model`` and
implements :meth:`~KnowledgeDistillationModule.training_losses` and ``configure_optimizers``. The base provides:

* guards: a one-line error naming the images with NaN or infinite pixels, and one naming the loss term, epoch and
  step as soon as a loss is not finite;
* the teacher/student schedule: ``teacher_warmup_epochs`` train the teacher alone, then the student trains, with the
  teacher frozen (``freeze_teacher``) or jointly (:attr:`training_teacher`, :attr:`training_student`);
* fitting of normal statistics: a torch model with ``fit_normal_statistics(images, sum_across_processes)`` is fitted
  on the training images before each validation of a fit, so thresholds are fitted on the scores it will give;
* ``trainer_arguments`` from a ``max_epochs`` argument (``anomalib benchmark`` passes no trainer settings), with
  gradient-norm clipping;
* the random generators' states in every checkpoint (:class:`~anomalib_dhkd.models.callbacks.RandomStateCheckpoint`);
* the backbone's normalisation in the default pre-processor and the family's evaluator (image AUROC, pixel AUROC,
  PRO);
* OpenVINO INT8 post-training quantisation of the encoder only, declared by :attr:`FEATURE_TAP_NAME`: the ops
  upstream of the torch model's feature taps are quantised, everything after them stays FP32.
"""

import copy
import dataclasses
import inspect
import logging
import math
import pickle
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from anomalib import LearningType
from anomalib.data import AnomalibDataModule, Batch
from anomalib.deploy import CompressionType
from anomalib.metrics import Evaluator
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.utils.serialization import anomalib_safe_globals
from anomalib.visualization import Visualizer
from lightning.pytorch import Callback
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torchvision.transforms.v2 import Normalize

from anomalib_dhkd.components.encoders import backbone_pre_processor
from anomalib_dhkd.models.callbacks import RandomStateCheckpoint
from anomalib_dhkd.models.evaluation import default_evaluator

logger = logging.getLogger(__name__)
T = TypeVar("T")


def check_finite_images(batch: Batch) -> None:
    """Raise a one-line ``ValueError`` naming the images of ``batch`` that contain NaN or infinite values.

    A non-finite pixel (from a custom datamodule or transform) would otherwise only surface as a non-finite loss
    term, with no hint of which image caused it.

    Args:
        batch: Batch whose ``image`` is checked; its ``image_path`` (if any) names the images.

    Raises:
        ValueError: If an image has a NaN or infinite pixel.

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


def resolve_schedule(
    max_epochs: int, teacher_warmup_epochs: int | None, freeze_teacher: bool | None
) -> tuple[int, bool]:
    """Decide a schedule that follows the budget: warm-up ``min(2, max_epochs // 2)``, frozen teacher if warmed up.

    Args:
        max_epochs: Training epochs, warm-up included.
        teacher_warmup_epochs: Warm-up epochs; ``None``: ``min(2, max_epochs // 2)``.
        freeze_teacher: Freeze the teacher after the warm-up; ``None``: frozen when there is a warm-up.

    Returns:
        The warm-up epochs and whether the teacher is frozen after them.

    Example:
        >>> resolve_schedule(10, None, None), resolve_schedule(2, None, None), resolve_schedule(1, None, None)
        ((2, True), (1, True), (0, False))

    """
    warmup = min(2, max_epochs // 2) if teacher_warmup_epochs is None else teacher_warmup_epochs
    return warmup, warmup > 0 if freeze_teacher is None else freeze_teacher


def check_schedule(teacher_warmup_epochs: int, max_epochs: int, freeze_teacher: bool) -> None:
    """Raise ``ValueError`` for a warm-up outside ``[0, max_epochs)`` or a frozen teacher that never trains.

    Args:
        teacher_warmup_epochs: Warm-up epochs, decided (:func:`resolve_schedule`).
        max_epochs: Training epochs, warm-up included.
        freeze_teacher: Whether the teacher is frozen after the warm-up.

    Raises:
        ValueError: If the warm-up is outside ``[0, max_epochs)``, or the teacher is frozen without a warm-up.

    """
    if not 0 <= teacher_warmup_epochs < max_epochs:
        msg = f"teacher_warmup_epochs must be in [0, max_epochs), got {teacher_warmup_epochs} and {max_epochs}."
        raise ValueError(msg)
    if freeze_teacher and teacher_warmup_epochs == 0:
        msg = "freeze_teacher=True needs teacher_warmup_epochs >= 1, or the teacher never trains; set one of them."
        raise ValueError(msg)


def as_settings(settings_class: type[T], value: T | Mapping[str, Any]) -> T:
    """Return ``value`` as a ``settings_class`` dataclass: checkpoints store settings as plain dictionaries.

    Args:
        settings_class: Settings dataclass, e.g. :class:`~anomalib_dhkd.components.scoring.ScoringConfig`.
        value: An instance of it (returned as is) or its fields as a mapping.

    Returns:
        The settings as a ``settings_class`` instance.

    Example:
        >>> from anomalib_dhkd.components.scoring import ScoringConfig
        >>> as_settings(ScoringConfig, {"blur_sigma": 8.0}).blur_sigma
        8.0

    """
    return settings_class(**value) if isinstance(value, Mapping) else value


def constructor_settings(hyper_parameters: Mapping[str, Any]) -> set[str]:
    """Return the names of saved hyper-parameters that are constructor arguments (not Lightning's ``_class_path``).

    Args:
        hyper_parameters: A checkpoint's ``hyper_parameters``.

    Returns:
        The names that do not start with an underscore.

    Example:
        >>> constructor_settings({"backbone": "resnet18", "_class_path": "anomalib_dhkd.models.Dhkd"})
        {'backbone'}

    """
    return {name for name in hyper_parameters if not name.startswith("_")}


def checkpoint_models(hyper_parameters: Mapping[str, Any]) -> list[str]:
    """Return the names of the anomalib models whose constructors take every saved hyper-parameter.

    Args:
        hyper_parameters: A checkpoint's ``hyper_parameters``.

    Returns:
        Class names of the direct subclasses of ``AnomalibModule`` (anomalib's and the plugin's) that fit, the
        model with the fewest constructor arguments first, since it is the closest match.

    Example:
        >>> import anomalib_dhkd.models
        >>> checkpoint_models({"backbone": "resnet18", "eman_momentum": 0.999})
        ['AsymmetricTs']

    """
    from anomalib.models.components import AnomalibModule

    fitting = []
    for model_class in AnomalibModule.__subclasses__():
        parameters = set(inspect.signature(model_class).parameters)
        if constructor_settings(hyper_parameters) <= parameters:
            fitting.append((len(parameters), model_class.__name__))
    return [name for _, name in sorted(fitting)]


def foreign_checkpoint_message(model_class: type, hyper_parameters: Mapping[str, Any], path: str = "") -> str | None:
    """Say in one line that a checkpoint is not ``model_class``'s, naming the likely model; ``None`` if it is.

    Args:
        model_class: The model the checkpoint is being loaded into.
        hyper_parameters: The checkpoint's ``hyper_parameters``.
        path: Checkpoint path to name in the message; ``""``: none.

    Returns:
        The message, or ``None`` if ``model_class`` recognises the hyper-parameters.

    Example:
        >>> from anomalib_dhkd.models import Dhkd
        >>> foreign_checkpoint_message(Dhkd, {"backbone": "resnet18"}) is None
        True
        >>> message = foreign_checkpoint_message(Dhkd, {"backbone": "resnet18", "eman_momentum": 0.999})
        >>> "is not a checkpoint of Dhkd" in message, "--model AsymmetricTs" in message
        (True, True)

    """
    if model_class.recognises(hyper_parameters):
        return None
    candidates = checkpoint_models(hyper_parameters) or ["another model"]
    settings = ", ".join(sorted(constructor_settings(hyper_parameters)))
    where = f" {path}" if path else ""
    return (
        f"The checkpoint{where} is not a checkpoint of {model_class.__name__}: its settings ({settings}) are those of "
        f"{' or '.join(candidates[:3])}. Load it with that model, e.g. `anomalib test --model {candidates[0]} "
        "--ckpt_path ...`."
    )


class KnowledgeDistillationModule:
    """What every model of the family shares: guards, schedule, statistics, trainer arguments, INT8 export.

    A mixin placed before ``AnomalibModule``: ``class Model(KnowledgeDistillationModule, AnomalibModule)``.

    Args:
        backbone: timm backbone whose pretrained mean and standard deviation the default pre-processor uses.
        max_epochs: Training epochs, teacher warm-up included.
        learning_rate: Adam learning rate of the :attr:`TRAINED_MODULES`.
        teacher_warmup_epochs: Epochs during which only the teacher trains; ``0`` for a fixed teacher; ``None``:
            ``min(2, max_epochs // 2)``, so that a short budget still trains the student.
        freeze_teacher: After the warm-up train the student alone (needs a warm-up); ``False``: both, jointly;
            ``None``: frozen when there is a warm-up.
        pre_processor: Pre-processor, or ``True`` for the default: resize to 256 px, normalise with the backbone's
            statistics.
        post_processor: Post-processor instance or flag to use the default.
        evaluator: Evaluator instance or flag to use the default (:func:`default_evaluator`).
        visualizer: Visualizer instance or flag to use the default.

    Raises:
        ValueError: For a warm-up outside ``[0, max_epochs)``, or ``freeze_teacher`` without a warm-up.

    """

    # Substring of the exported op names of the torch model's feature taps (its per-layer feature normalisation),
    # which INT8 post-training quantisation keeps everything after in FP32; ``None``: no encoder-only INT8.
    FEATURE_TAP_NAME: ClassVar[str | None] = None
    # Sub-modules of the torch model that the optimiser trains; everything else (the frozen teacher) stays as it is.
    TRAINED_MODULES: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        backbone: str,
        max_epochs: int,
        learning_rate: float = 1e-3,
        teacher_warmup_epochs: int | None = 0,
        freeze_teacher: bool | None = False,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        teacher_warmup_epochs, freeze_teacher = resolve_schedule(max_epochs, teacher_warmup_epochs, freeze_teacher)
        check_schedule(teacher_warmup_epochs, max_epochs, freeze_teacher)
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(backbone=backbone)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        # Lightning saves the arguments of every __init__ on the way, this mixin's too; a checkpoint keeps only the
        # model's own constructor arguments, so that it loads back into the model. Settings dataclasses are saved as
        # dictionaries, so that a checkpoint loads with a plain torch.load(weights_only=True), as anomalib's own
        # callbacks load it; the constructor takes either.
        constructor = inspect.signature(type(self)).parameters
        for name, value in list(self.hparams.items()):
            if name not in constructor:
                del self.hparams[name]
            elif dataclasses.is_dataclass(value):
                self.hparams[name] = dataclasses.asdict(value)
        self.max_epochs = max_epochs
        self.learning_rate = learning_rate
        self.teacher_warmup_epochs = teacher_warmup_epochs
        self.freeze_teacher = freeze_teacher
        self._statistics_step: int | None = None  # global step at which the normal-image statistics were fitted

    @classmethod
    def recognises(cls, hyper_parameters: Mapping[str, Any]) -> bool:
        """Return whether a checkpoint's hyper-parameters can be this model's (every one is a constructor argument).

        Args:
            hyper_parameters: The checkpoint's ``hyper_parameters``.

        Returns:
            ``True`` if every saved setting is an argument of this model's constructor.

        """
        return constructor_settings(hyper_parameters) <= set(inspect.signature(cls).parameters)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args: Any, **kwargs: Any) -> Any:
        """Load a checkpoint, or say in one line which model it belongs to if it is another model's.

        Args:
            checkpoint_path: Path of the Lightning checkpoint.
            *args: Passed on to Lightning's ``load_from_checkpoint``.
            **kwargs: Passed on to Lightning's ``load_from_checkpoint`` (``map_location``, ``strict``, ...).

        Returns:
            The model, with the checkpoint's weights and hyper-parameters.

        Raises:
            ValueError: If the checkpoint holds another model.

        """
        try:
            with anomalib_safe_globals(extra=cls.checkpoint_safe_globals()):
                # mmap: only the hyper-parameters are read here; the weights are read once, by Lightning below
                checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
        except (pickle.UnpicklingError, RuntimeError):  # disallowed types, or a file mmap cannot map: Lightning's
            # own load below reports what is wrong
            checkpoint = {}
        message = foreign_checkpoint_message(cls, checkpoint.get("hyper_parameters", {}), str(checkpoint_path))
        if message:
            raise ValueError(message)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_fit_start(self) -> None:
        """Remember the checkpoint a fit resumes from (see :meth:`on_load_checkpoint`)."""
        super().on_fit_start()
        self._resumed_from = self.trainer.ckpt_path

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse another model's checkpoint in one line; test the finished model, not the one a fit resumed from.

        anomalib 2.7's ``Engine.train(ckpt_path=...)`` (and ``anomalib train --ckpt_path``) hands the checkpoint it
        resumed from to ``test`` as well, which would report the metrics of that older model. When a test loads the
        very checkpoint this process's fit resumed from, the finished weights are kept, with a warning.

        Args:
            checkpoint: The loaded checkpoint; in that case its weights and callback states are replaced by the
                finished run's.

        Raises:
            ValueError: If the checkpoint holds another model.

        """
        message = foreign_checkpoint_message(type(self), checkpoint.get("hyper_parameters", {}))
        if message:
            raise ValueError(message)
        if self._tests_a_checkpoint_it_resumed_from(checkpoint):
            logger.warning(
                "Testing the model this run finished (step %d), not the checkpoint it resumed from (step %d), "
                "which anomalib's Engine.train passes to test.",
                self.global_step,
                checkpoint.get("global_step", 0),
            )
            checkpoint["state_dict"] = {name: value.clone() for name, value in self.state_dict().items()}
            saved_callbacks = checkpoint.get("callbacks", {})
            for callback in self.trainer.callbacks:  # the post-processor's fitted thresholds live here too
                if callback.state_key in saved_callbacks:
                    saved_callbacks[callback.state_key] = copy.deepcopy(callback.state_dict())
        super().on_load_checkpoint(checkpoint)

    def _tests_a_checkpoint_it_resumed_from(self, checkpoint: dict[str, Any]) -> bool:
        """Whether a test is loading the (older) checkpoint this process's fit resumed from."""
        resumed_from = getattr(self, "_resumed_from", None)
        return (
            self._trainer is not None
            and resumed_from is not None
            and self.trainer.state.fn == TrainerFn.TESTING
            and self.trainer.ckpt_path == resumed_from
            and checkpoint.get("global_step", 0) < self.global_step
        )

    @classmethod
    def configure_pre_processor(
        cls,
        image_size: tuple[int, int] | None = None,
        backbone: str = "wide_resnet50_2",
    ) -> PreProcessor:
        """Return a pre-processor that resizes and normalises with the backbone's pretrained statistics.

        Args:
            image_size: Model input size ``(height, width)``; ``None``: 256 x 256.
            backbone: timm backbone whose pretrained mean and standard deviation normalise the images.

        Returns:
            The pre-processor.

        """
        return backbone_pre_processor(backbone, image_size)

    def input_normalization(self, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the mean and standard deviation ``(1, C, 1, 1)`` the pre-processor normalises images with.

        Args:
            device: Device of the returned tensors.

        Returns:
            The ``Normalize`` transform's mean and std; 0 and 1 when the pre-processor does not normalise.

        """
        transform = getattr(self.pre_processor, "transform", None)
        for step in getattr(transform, "transforms", [transform]):
            if isinstance(step, Normalize):
                mean, std = (
                    torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1) for v in (step.mean, step.std)
                )
                return mean, std
        return torch.zeros(1, 1, 1, 1, device=device), torch.ones(1, 1, 1, 1, device=device)

    def synthesize_anomalies(
        self, images: torch.Tensor, synthesizer: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Paint synthetic anomalies on pre-processed (normalised) training images.

        The synthesizer works on images in ``[0, 1]``: the images are de-normalised, painted and normalised again.
        An image that got no anomaly comes back bit for bit, so that a model may reuse its features.

        Args:
            images: Pre-processed images ``(N, C, H, W)``, as ``training_step`` receives them.
            synthesizer: Maps images in ``[0, 1]`` to augmented images and anomaly masks ``(N, 1, H, W)``
                (e.g. :class:`~anomalib_dhkd.components.synthesis.ForegroundAnomalies`).

        Returns:
            The augmented images, normalised like ``images``, and the anomaly masks.

        """
        mean, std = self.input_normalization(images.device)
        augmented, masks = synthesizer((images * std + mean).clamp(0, 1))
        painted = masks.flatten(1).any(dim=1).view(-1, 1, 1, 1)
        return torch.where(painted, (augmented - mean) / std, images), masks

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Return the family's evaluator (:func:`~anomalib_dhkd.models.evaluation.default_evaluator`).

        Returns:
            Image AUROC for validation; image AUROC and F1, pixel AUROC and F1, and PRO for testing.

        """
        return default_evaluator()

    @property
    def training_student(self) -> bool:
        """Whether the teacher warm-up is over and the student is being distilled."""
        return self.current_epoch >= self.teacher_warmup_epochs

    @property
    def training_teacher(self) -> bool:
        """Whether the teacher trains: always, or only during the warm-up with ``freeze_teacher``."""
        return not self.freeze_teacher or self.current_epoch < self.teacher_warmup_epochs

    def training_losses(self, batch: Batch) -> Mapping[str, torch.Tensor | None]:
        """Return the loss terms of a batch of normal images; each model of the family implements it.

        Args:
            batch: Training batch of normal images.

        Returns:
            ``total`` (the optimised loss) and named terms to log; a ``None`` term is skipped.

        Raises:
            NotImplementedError: In the base class.

        """
        raise NotImplementedError

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Check the images, compute :meth:`training_losses`, stop on a non-finite term and log them.

        Args:
            batch: Training batch of normal images.
            *args: Unused.
            **kwargs: Unused.

        Returns:
            ``{"loss": total}`` for Lightning to optimise.

        Raises:
            ValueError: If an input image contains NaN or infinite values, naming the image paths.
            FloatingPointError: As soon as a loss term is not finite, naming the term, epoch and step.

        """
        del args, kwargs  # These variables are not used.
        check_finite_images(batch)
        terms = {name: value for name, value in self.training_losses(batch).items() if value is not None}
        for name, value in terms.items():
            if not math.isfinite(value.item()):
                msg = (
                    f"{type(self).__name__} loss term '{name}' became {value.item()} at epoch {self.current_epoch}, "
                    f"step {self.global_step}. Lower the learning rate, or check the input images "
                    "(python -m anomalib_dhkd.check ROOT)."
                )
                raise FloatingPointError(msg)
        batch_size = batch.image.shape[0]
        total = terms.pop("total")
        self.log_dict({f"train_{name}": value for name, value in terms.items()}, batch_size=batch_size)
        self.log("train_loss", total, on_epoch=True, prog_bar=True, batch_size=batch_size)
        return {"loss": total}

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Predict anomaly maps and scores of a validation batch.

        Args:
            batch: Validation batch.
            *args: Unused.
            **kwargs: Unused.

        Returns:
            The batch, updated with ``pred_score`` and ``anomaly_map``.

        """
        del args, kwargs  # These variables are not used.
        return batch.update(**self.model(batch.image)._asdict())

    def on_validation_start(self) -> None:
        """During a fit, fit the normal-image statistics of the current weights before validation scores anything."""
        fit = getattr(self.model, "fit_normal_statistics", None)
        if fit is not None and self.trainer.state.fn == TrainerFn.FITTING and self._statistics_step != self.global_step:
            self.fit_normal_statistics()

    def fit_normal_statistics(self) -> None:
        """Fit the torch model's statistics of normal images on the training images (all processes)."""
        logger.info("%s: fitting the statistics of normal images on the training images.", type(self).__name__)
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
        """Refuse ``INT8_ACQ`` for models with an encoder-only INT8 scope; the rest goes through anomalib.

        NNCF's accuracy-controlled search starts from a fully quantised model, and INT8 activations after the
        encoder (in a flow, a student or the scoring) break the scores; anomalib gives it no ignored scope.

        Raises:
            ValueError: For ``INT8_ACQ`` when :attr:`FEATURE_TAP_NAME` is set.

        """
        if compression_type == CompressionType.INT8_ACQ and self.FEATURE_TAP_NAME:
            msg = (
                f"{type(self).__name__} does not support INT8_ACQ export: INT8 activations after its encoder break the "
                "scores. Use INT8_PTQ, which quantises the encoder only, or FP16."
            )
            raise ValueError(msg)
        return super()._compress_ov_model(model, compression_type, *args, **kwargs)

    def _post_training_quantization_ov(self, model: Any, datamodule: AnomalibDataModule | None = None) -> Any:
        """INT8 post-training quantisation of the encoder only (:attr:`FEATURE_TAP_NAME`), calibrated on validation.

        Raises:
            ValueError: If no datamodule is given to calibrate on.

        """
        if not self.FEATURE_TAP_NAME:
            return super()._post_training_quantization_ov(model, datamodule)
        import nncf

        from anomalib_dhkd.deployment.quantization import calibration_dataset, encoder_only_scope

        if datamodule is None:
            msg = "INT8_PTQ export needs a datamodule: its validation images calibrate the quantiser."
            raise ValueError(msg)
        scope = encoder_only_scope(model, tap_name=self.FEATURE_TAP_NAME, num_taps=self.feature_tap_count)
        return nncf.quantize(model, calibration_dataset(model, datamodule), ignored_scope=scope)

    @property
    def feature_tap_count(self) -> int:
        """Number of feature taps of the exported model: the torch model's encoder layers."""
        return len(self.model.encoder.layers)

    def setup(self, stage: str) -> None:
        """Let DDP tolerate parameters that get no gradient in some epochs (students in the warm-up, frozen teachers).

        Without ``find_unused_parameters``, ``--trainer.strategy ddp`` stops at the first step of the warm-up.

        Args:
            stage: Lightning stage (``"fit"``, ``"test"``, ...); the same for every stage.

        """
        del stage  # The same for every stage.
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy) and self.teacher_warmup_epochs > 0:
            strategy._ddp_kwargs.setdefault("find_unused_parameters", True)  # Lightning has no public setter

    def configure_callbacks(self) -> list[Callback]:
        """Add a checkpoint of the random generators to anomalib's callbacks, so a resumed run continues exactly.

        Returns:
            anomalib's callbacks and a :class:`~anomalib_dhkd.models.callbacks.RandomStateCheckpoint`.

        """
        callbacks = super().configure_callbacks()
        return [*(callbacks if isinstance(callbacks, Sequence) else [callbacks]), RandomStateCheckpoint()]

    def configure_optimizers(self) -> torch.optim.Adam:
        """Adam over the model's :attr:`TRAINED_MODULES`, with ``learning_rate`` and weight decay 1e-5.

        Returns:
            The optimiser over every parameter of those modules (one that never requires a gradient, such as a flow's
            fixed permutation, is kept, so that the optimiser state of earlier checkpoints still fits); the other
            sub-modules (the frozen teacher) are left out.

        """
        modules = [getattr(self.model, name) for name in self.TRAINED_MODULES]
        modules = [module for module in modules if module is not None]  # a branch an ablation leaves out
        parameters = [p for module in modules for p in module.parameters()]
        return torch.optim.Adam(parameters, lr=self.learning_rate, weight_decay=1e-5)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Train for ``max_epochs`` with gradient-norm clipping at 1 (flow and distillation stability).

        Returns:
            Trainer arguments: ``max_epochs``, norm clipping at 1 and no sanity validation steps.

        """
        return {
            "max_epochs": self.max_epochs,
            "gradient_clip_val": 1.0,
            "gradient_clip_algorithm": "norm",
            "num_sanity_val_steps": 0,
        }

    @property
    def learning_type(self) -> LearningType:
        """The family learns from normal images only."""
        return LearningType.ONE_CLASS
