"""PyTorch model of Dmdd: dual-modeling decouple distillation.

Our reading of "Dual-Modeling Decouple Distillation for Unsupervised Anomaly Detection" (Liu, Wang, Leng, Zhang;
ACM MM 2024). A frozen pretrained teacher; a randomly initialised pyramid student whose features at every scale are
expanded by 1x1 convolutions to twice the channels and split into normality and abnormality features; a segmentation
head that turns both discrepancies into the anomaly map:

    images --> teacher (frozen) --> T_k
    images --> pyramid student --> 1x1 expansion --> [F_n,k | F_a,k]
    maps_k = (1 - cos(F_n,k, T_k), 1 - cos(F_a,k, T_k)), upsampled to the shallowest scale, stacked (2K channels)
    maps --> segmentation head (per position) --> sigmoid --> x normality discrepancy --> smoothed map, top-1 % score
    training on (I, I_a, M) pairs from foreground-aware synthesis: NGM + AIM + focal/Dice on M (loss.py)
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import InferenceBatch
from torch import nn

from anomalib_dhkd.components.encoders import build_encoder
from anomalib_dhkd.components.scoring import MapFusion
from anomalib_dhkd.components.scoring.segmentation import MultiPerceptionHead, PixelwiseHead
from anomalib_dhkd.components.students import ContextualStudent
from anomalib_dhkd.models.dmdd.anomaly_map import fused_output
from anomalib_dhkd.models.dmdd.loss import cosine_distance
from anomalib_dhkd.models.network import use_channels_last


class DmddTrainingOutput(NamedTuple):
    """What :class:`~anomalib_dhkd.models.dmdd.loss.DmddLoss` needs from a training pair ``(I, I_a, M)``."""

    teacher_normal: list[torch.Tensor]
    teacher_augmented: list[torch.Tensor]
    normality_normal: list[torch.Tensor]
    normality_augmented: list[torch.Tensor]
    abnormality_augmented: list[torch.Tensor]
    logits: torch.Tensor
    masks: torch.Tensor


def decoupler(channels: int) -> nn.Sequential:
    """Per-scale 1x1 expansion of the student's features to ``2 * channels`` (normality | abnormality)."""
    return nn.Sequential(
        nn.Conv2d(channels, 2 * channels, 1, bias=False),
        nn.BatchNorm2d(2 * channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(2 * channels, 2 * channels, 1),
    )


class DmddModel(nn.Module):
    """Dmdd network: frozen teacher, decoupled pyramid student, segmentation head.

    Args:
        backbone: timm backbone of the teacher.
        layers: Teacher layers, shallowest first.
        pre_trained: Load the teacher's ImageNet weights.
        blur_sigma: Gaussian smoothing of the anomaly map in pixels; ``0``: none.
        score_fraction: The image score is the mean of this share of the map's highest values.
        segmentation_head: The map comes from the segmentation head; ``False`` (ablation): from the normality
            features' ``1 - cos`` distances to the teacher's, fused over scales.
        normality_in_map: Multiply the head's probabilities by the normality discrepancy (mean over scales), so a
            position is anomalous only where both agree; ``False`` (ablation): the head's probabilities alone.

    Example:
        >>> model = DmddModel("resnet18", ["layer1", "layer2"], False)
        >>> output = model.eval()(torch.rand(1, 3, 64, 64))
        >>> output.anomaly_map.shape, output.pred_score.shape
        (torch.Size([1, 1, 64, 64]), torch.Size([1]))

    """

    def __init__(
        self,
        backbone: str,
        layers: list[str],
        pre_trained: bool,
        blur_sigma: float = 4.0,
        score_fraction: float = 0.01,
        segmentation_head: bool = True,
        normality_in_map: bool = True,
        multi_perception: bool = False,
    ) -> None:
        super().__init__()
        self.segmentation_head = segmentation_head
        self.normality_in_map = normality_in_map
        self.teacher = build_encoder(backbone, layers, pre_trained)
        channels = list(self.teacher.out_dims)
        strides = self.teacher.feature_extractor.feature_info.reduction()
        self.student = ContextualStudent(channels, strides, contextual=False)
        self.decouplers = nn.ModuleList(decoupler(c) for c in channels)
        head = MultiPerceptionHead if multi_perception else PixelwiseHead
        self.head = head(2 * len(channels))
        self.map_fusion = MapFusion(blur_sigma, score_fraction)
        use_channels_last(self)

    def teacher_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return the frozen teacher's features of ``images`` per scale."""
        self.teacher.eval()
        return list(self.teacher(images).values())

    def paired_teacher_features(
        self, images: torch.Tensor, augmented: torch.Tensor, masks: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Return the teacher's features of the normal images and of their augmented copies.

        The frozen teacher treats each image alone, so it runs once, on the normal images and only those copies that
        got an anomaly; an unpainted copy is its normal image (``synthesize_anomalies``) and shares its features.
        """
        painted = masks.flatten(1).any(dim=1)
        features = self.teacher_features(torch.cat([images, augmented[painted]]))
        normal = [f[: len(images)] for f in features]
        paired = []
        for normal_features, both in zip(normal, features, strict=True):
            augmented_features = normal_features.clone()
            augmented_features[painted] = both[len(images) :]
            paired.append(augmented_features)
        return normal, paired

    @contextmanager
    def student_mode(self, training: bool) -> Iterator[None]:
        """Run the student and decouplers in training mode or not, and restore their modes afterwards."""
        modules = (self.student, self.decouplers)
        modes = [module.training for module in modules]
        for module in modules:
            module.train(training)
        try:
            yield
        finally:
            for module, mode in zip(modules, modes, strict=True):
                module.train(mode)

    def decoupled_features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Return the student's normality and abnormality features of ``images`` per scale."""
        split = [d(f).chunk(2, dim=1) for d, f in zip(self.decouplers, self.student(images), strict=True)]
        return [normality for normality, _ in split], [abnormality for _, abnormality in split]

    @staticmethod
    def discrepancy_maps(
        teacher: list[torch.Tensor], normality: list[torch.Tensor], abnormality: list[torch.Tensor]
    ) -> torch.Tensor:
        """Stack ``1 - cos`` of both feature kinds against the teacher at every scale, at the shallowest resolution.

        Returns:
            ``(N, 2K, h_1, w_1)``: normality then abnormality discrepancy of each scale.

        """
        size = teacher[0].shape[-2:]
        maps = [
            F.interpolate(cosine_distance(features, target), size=size, mode="bilinear", align_corners=False)
            for target, n, a in zip(teacher, normality, abnormality, strict=True)
            for features in (n, a)
        ]
        return torch.cat(maps, dim=1)

    def head_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the head's anomaly probabilities ``(N, 1, h_1, w_1)`` and its input, the discrepancy maps."""
        normality, abnormality = self.decoupled_features(images)
        discrepancies = self.discrepancy_maps(self.teacher_features(images), normality, abnormality)
        return self.head(discrepancies).sigmoid(), discrepancies

    @staticmethod
    def normality_discrepancy(discrepancies: torch.Tensor) -> torch.Tensor:
        """Mean over scales of the normality channels of :meth:`discrepancy_maps`' output, ``(N, 1, h_1, w_1)``."""
        return discrepancies[:, 0::2].mean(dim=1, keepdim=True)

    def training_outputs(
        self, images: torch.Tensor, augmented: torch.Tensor, masks: torch.Tensor, train_student: bool = True
    ) -> DmddTrainingOutput:
        """Return everything the loss needs from normal images, their augmented copies and the anomaly masks.

        The head learns from the discrepancy maps of the augmented images without changing the student (detached).
        With ``train_student=False`` the student and decouplers run as at test time (evaluation mode, no gradients),
        so that the head adapts to the finished student's maps.
        """
        teacher_normal, teacher_augmented = self.paired_teacher_features(images, augmented, masks)
        with torch.set_grad_enabled(train_student), self.student_mode(train_student):
            normality_normal, _ = self.decoupled_features(images)
            normality_augmented, abnormality_augmented = self.decoupled_features(augmented)
        maps = self.discrepancy_maps(
            teacher_augmented, [n.detach() for n in normality_augmented], [a.detach() for a in abnormality_augmented]
        )
        return DmddTrainingOutput(
            teacher_normal,
            teacher_augmented,
            normality_normal,
            normality_augmented,
            abnormality_augmented,
            self.head(maps),
            masks,
        )

    def forward(
        self,
        images: torch.Tensor,
        augmented: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        train_student: bool = True,
    ) -> DmddTrainingOutput | InferenceBatch:
        """Return the training outputs in training mode, else the smoothed anomaly map and the image score.

        Raises:
            ValueError: In training mode without augmented images and masks.

        """
        if self.training:
            if augmented is None or masks is None:
                msg = "Dmdd trains on pairs: pass the augmented images and their anomaly masks."
                raise ValueError(msg)
            return self.training_outputs(images, augmented, masks, train_student)
        if self.segmentation_head:
            probabilities, discrepancies = self.head_maps(images)
            if self.normality_in_map:
                probabilities = probabilities * self.normality_discrepancy(discrepancies)
            maps = [probabilities]
        else:
            normality, _ = self.decoupled_features(images)
            maps = [cosine_distance(n, t) for n, t in zip(normality, self.teacher_features(images), strict=True)]
        return fused_output(maps, tuple(images.shape[-2:]), self.map_fusion)
