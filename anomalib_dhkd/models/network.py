"""Base torch model of the family: teacher-student features in training, scorer output in evaluation.

Every model of the family is a :class:`TeacherStudentNetwork`: in training mode ``forward`` returns what its loss
needs (:meth:`~TeacherStudentNetwork.training_outputs`); in evaluation mode the per-layer teacher and student features
of the images (:meth:`~TeacherStudentNetwork.scoring_input`) go through the network's
:class:`~anomalib_dhkd.components.scoring.DiscrepancyScorer` (``self.scorer``), which returns an
:class:`~anomalib.data.InferenceBatch`. The scorer's statistics of normal images are fitted by
:meth:`~TeacherStudentNetwork.fit_normal_statistics`, which the Lightning base module calls before validation.
"""

from collections.abc import Callable, Iterable
from typing import Any

import torch
from anomalib.data import InferenceBatch
from torch import nn

from anomalib_dhkd.components.scoring import DiscrepancyScorer, ScoringInput


def use_channels_last(network: nn.Module) -> nn.Module:
    """Store ``network``'s convolution weights channels-last (NHWC), in place, and return it.

    Every convolution with channels-last weights gives channels-last activations, and oneDNN (CPU) and cuDNN (GPU)
    run that layout faster. Measured on 2 CPU cores, 256 px, same outputs to float rounding: DHKD 6 to 20 % faster
    training steps and 19 to 25 % faster inference; the frozen ``tf_efficientnet_lite0`` encoder alone 1.8 times as
    fast at batch 8; Dmdd's training step 1.7 times and AsymmetricTs' 1.7 times as fast (docs/experiments.md).
    Code that flattens features with ``view`` needs ``contiguous()`` first.

    Args:
        network: A model of the family, at the end of its constructor.

    Returns:
        ``network``.

    """
    return network.to(memory_format=torch.channels_last)


class TeacherStudentNetwork(nn.Module):
    """A teacher-student network scored by a :class:`~anomalib_dhkd.components.scoring.DiscrepancyScorer`.

    Subclasses build ``self.scorer`` and implement :meth:`training_outputs` and :meth:`scoring_input`;
    :class:`~anomalib_dhkd.models.dhkd.DhkdModel` and :class:`~anomalib_dhkd.models.asymmetric_ts.AsymmetricTsModel`
    show it in their examples.
    """

    scorer: DiscrepancyScorer

    def training_outputs(self, images: torch.Tensor, **options: Any) -> Any:
        """Return what the model's loss needs from a batch of normal training images.

        Args:
            images: Pre-processed images ``(N, 3, H, W)``.
            **options: What the model needs besides the images: schedule flags (``train_teacher``, ``train_student``),
                augmented images.

        Returns:
            The model's training output, the input of its loss.

        Raises:
            NotImplementedError: In the base class.

        """
        raise NotImplementedError

    def scoring_input(self, images: torch.Tensor) -> ScoringInput:
        """Return the per-layer teacher and student features of ``images`` for the scorer.

        Args:
            images: Pre-processed images ``(N, 3, H, W)``.

        Returns:
            The features of every layer the scorer uses, and the image size.

        Raises:
            NotImplementedError: In the base class.

        """
        raise NotImplementedError

    @torch.no_grad()
    def fit_normal_statistics(
        self,
        images: Callable[[], Iterable[torch.Tensor]],
        sum_across_processes: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """Fit the scorer's statistics of normal images in inference passes over the training images.

        Args:
            images: Returns a fresh iterable of batches ``(N, 3, H, W)`` of normal (pre-processed) training images,
                at the size the model will be run at, once per pass.
            sum_across_processes: Sums a tensor over distributed processes; ``None`` on a single process.

        """
        was_training = self.training
        self.eval()  # normalisation layers must not update their running statistics here
        try:
            self.scorer.fit(lambda: (self.scoring_input(batch) for batch in images()), sum_across_processes)
        finally:
            self.train(was_training)

    def forward(self, images: torch.Tensor, **options: Any) -> Any:
        """Return the training outputs in training mode (:meth:`training_outputs`), else an ``InferenceBatch``.

        Args:
            images: Pre-processed images ``(N, 3, H, W)``.
            **options: Passed on to :meth:`training_outputs`; ignored in evaluation mode.

        Returns:
            In training mode what the loss needs; else ``pred_score`` ``(N,)`` and ``anomaly_map`` ``(N, 1, H, W)``.

        """
        if self.training:
            return self.training_outputs(images, **options)
        result: InferenceBatch = self.scorer(self.scoring_input(images))
        return result
