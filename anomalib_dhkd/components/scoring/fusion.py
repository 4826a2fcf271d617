"""Fusion of per-layer maps into the anomaly map and the image score, with calibrated additions.

Every map is bilinearly upsampled to the image size, averaged over layers and smoothed with a Gaussian (``sigma =
4`` px, as in Reverse Distillation and CFLOW) to remove the block artefacts of coarse layers. The image score is the
mean of the highest ``score_fraction`` of its own (possibly standardised) map: steadier than a single maximum,
while 1 % of a 256 px image (655 px) is still smaller than one smoothed stride-16 cell. :class:`MapCoherence` adds
the calibrated coherence of the discrepancy to the map and :class:`ImageScoreFusion` adds calibrated global evidence
to the score; both are the identity until fitted, so checkpoints saved without them load and score as before.
"""

from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from anomalib_dhkd.components.scoring.global_statistics import GaussianDistance, channel_statistics
from anomalib_dhkd.components.scoring.position_statistics import mean_and_std
from anomalib_dhkd.components.scoring.smoothing import GaussianBlur

LayerFusion = Literal["mean", "product"]
"""How per-layer maps become one: their mean, or their product as in STFPM (Wang et al., 2021, Sec. 3.3)."""
LAYER_FUSIONS = get_args(LayerFusion)


def top_fraction_mean(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """Return the mean of the highest ``fraction`` of the values of each map; at least one value.

    Args:
        maps: Maps ``(N, 1, H, W)``.
        fraction: Share of the values averaged, in ``(0, 1]``.

    Returns:
        One score per map ``(N,)``.

    Example:
        >>> top_fraction_mean(torch.arange(100.0).view(1, 1, 10, 10), 0.02)
        tensor([98.5000])

    """
    values = maps.flatten(start_dim=1)
    count = max(1, round(fraction * values.shape[1]))
    return values.topk(count, dim=1).values.mean(dim=1)


def gaussian_blur(sigma: float) -> nn.Module:
    """Return Gaussian smoothing (:class:`~anomalib_dhkd.components.scoring.GaussianBlur`); ``sigma = 0``: none.

    Args:
        sigma: Standard deviation in pixels, non-negative.

    Returns:
        The smoothing module, or ``nn.Identity`` for ``sigma = 0``.

    """
    return GaussianBlur(sigma) if sigma > 0 else nn.Identity()


class MapFusion(nn.Module):
    """Fuse per-scale discrepancy maps into one smoothed anomaly map, and score images by their score scales.

    Args:
        sigma: Standard deviation of the Gaussian smoothing of the anomaly map in pixels; ``0`` disables smoothing.
        score_fraction: Share of the score map's highest values averaged into the image score, in ``(0, 1]``.
        score_sigma: Smoothing of the map the image score is taken from; ``None``: ``sigma``.
        layer_fusion: ``"mean"`` of the upsampled per-scale maps, or their ``"product"`` (STFPM, Sec. 3.3), which
            keeps only what every scale sees.

    Raises:
        ValueError: If ``score_fraction`` is outside ``(0, 1]`` or ``layer_fusion`` is unknown.

    Example:
        >>> fusion = MapFusion(sigma=0.0)
        >>> anomaly_map, score = fusion([torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 8, 8)], None, (16, 16))
        >>> anomaly_map.shape, score
        (torch.Size([2, 1, 16, 16]), tensor([0.5000, 0.5000]))
        >>> MapFusion(sigma=0.0, layer_fusion="product")([torch.full((1, 1, 2, 2), 3.0)] * 2, None, (4, 4))[1]
        tensor([9.])

    """

    def __init__(
        self,
        sigma: float = 4.0,
        score_fraction: float = 0.01,
        score_sigma: float | None = None,
        layer_fusion: LayerFusion = "mean",
    ) -> None:
        super().__init__()
        if not 0 < score_fraction <= 1:
            msg = f"score_fraction must be in (0, 1], got {score_fraction}."
            raise ValueError(msg)
        if layer_fusion not in LAYER_FUSIONS:
            msg = f"map_fusion must be one of {list(LAYER_FUSIONS)}, got {layer_fusion!r}."
            raise ValueError(msg)
        self.blur = gaussian_blur(sigma)
        # A separate module only when it differs, so the same smoothing is not computed twice.
        self.score_blur = None if score_sigma is None or score_sigma == sigma else gaussian_blur(score_sigma)
        self.score_fraction = score_fraction
        self.layer_fusion = layer_fusion

    def fuse(self, maps: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """Return the mean (or product) of ``maps``, each bilinearly upsampled to ``image_size``.

        Args:
            maps: Per-scale maps ``(N, 1, h_k, w_k)``.
            image_size: Output ``(H, W)``.

        Returns:
            The fused map ``(N, 1, H, W)``.

        """
        upsampled = torch.stack([F.interpolate(m, size=image_size, mode="bilinear", align_corners=False) for m in maps])
        return upsampled.prod(dim=0) if self.layer_fusion == "product" else upsampled.mean(dim=0)

    def smooth(self, maps: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """Fuse ``maps`` and smooth them as the anomaly map is.

        Args:
            maps: Per-scale maps ``(N, 1, h_k, w_k)``.
            image_size: Output ``(H, W)``.

        Returns:
            The smoothed fused map ``(N, 1, H, W)``.

        """
        return self.blur(self.fuse(maps, image_size))

    def forward(
        self,
        map_scales: list[torch.Tensor],
        score_scales: list[torch.Tensor] | None,
        image_size: tuple[int, int],
        map_addends: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the anomaly map ``(N, 1, *image_size)`` and the image score ``(N,)``.

        Args:
            map_scales: Per-scale maps ``(N, 1, h_k, w_k)`` fused into the anomaly map.
            score_scales: Per-scale maps fused the same way into the map the image score is taken from; ``None``:
                the ``map_scales``.
            image_size: Output size of the anomaly map.
            map_addends: Maps ``(N, 1, h_j, w_j)`` each upsampled and added to the fused map before smoothing (the
                scaled coherences of :class:`MapCoherence`); the image score does not include them.

        Returns:
            The anomaly map and the top-``score_fraction`` mean of the score map.

        """
        fused_map = self.fuse(map_scales, image_size)
        # Added before the (linear) smoothing, which is then run once: OpenVINO's conversion of a second smoothed
        # map added after it gives other maps at batch size 1.
        with_addends = fused_map
        for addend in map_addends or []:
            with_addends = with_addends + self.fuse([addend], image_size)
        anomaly_map = self.blur(with_addends)
        if score_scales is None and self.score_blur is None and not map_addends:
            score_map = anomaly_map
        else:
            fused_score = fused_map if score_scales is None else self.fuse(score_scales, image_size)
            score_map = (self.score_blur or self.blur)(fused_score)
        return anomaly_map, top_fraction_mean(score_map, self.score_fraction)


class MapCoherence(nn.Module):
    """Add the coherence of layers' teacher-student discrepancies to the anomaly map, in the local map's units.

    The local discrepancy ``mean_c (S - T)^2`` of a defect that shifts a large region a little (Magnetic Tile's
    uneven lighting) stays within the spread of normal texture at every position; the misses are small but alike
    across the region, which :func:`discrepancy_coherence` measures. Each layer's smoothed coherence map is scaled to
    the local map's standard deviation on the normal training images, times the layer's weight, and added. Our
    addition; the DHKD paper's map is the local discrepancy. ``offline_dhkd`` (``blocks.4``, 7 x 7 cells, weight 0.15;
    ``blocks.6``, 3 x 3, weight 0.25) in the benchmark suite, seeds 0-2, pixel AUROC / PRO: Magnetic Tile +2.9 / +1.7
    points on the mean (0.778 / 0.751 to 0.807 / 0.768); MVTec bottle -0.02 to -0.03 / -0.6 to -0.8 per seed (model
    README, "Ablation of the choices kept").

    Until fitted the scales are 0 and the map is the local map, as checkpoints saved without it mapped, and such
    checkpoints still load, as do those saved with one layer's scalar scale. The scaled coherences are added to the
    fused map before smoothing, which is linear, so the map is the smoothed local map plus the scaled smoothed
    coherence maps.

    Args:
        windows: Side of each layer's neighbourhood in cells of that layer, odd.
        weights: Weight of each layer's coherence map relative to the local map's spread on normal images, positive.

    Raises:
        ValueError: If a window is even or not positive, a weight is not positive, or the lengths differ.

    Example:
        The scale is the weight times the ratio of the local map's spread to the coherence map's:

        >>> from anomalib_dhkd.components.scoring import map_moments
        >>> coherence = MapCoherence(windows=[7], weights=[0.25])
        >>> coherence.fit(map_moments(torch.tensor([0.0, 2.0])), [map_moments(torch.tensor([0.0, 1.0]))])
        >>> coherence.scale
        tensor([0.5000])

    """

    def __init__(self, windows: list[int], weights: list[float]) -> None:
        super().__init__()
        if not windows or len(windows) != len(weights):
            msg = f"Give one coherence weight per coherence layer, got {len(weights)} for {len(windows)} layer(s)."
            raise ValueError(msg)
        if any(window < 1 or window % 2 == 0 for window in windows):
            msg = f"Coherence windows must be odd numbers of cells, got {windows}."
            raise ValueError(msg)
        if any(weight <= 0 for weight in weights):
            msg = f"Coherence weights must be positive (0 turns the coherence off), got {weights}."
            raise ValueError(msg)
        self.windows = list(windows)
        self.weights = list(weights)
        self.scale: torch.Tensor
        self.register_buffer("scale", torch.zeros(len(windows)))
        self.register_load_state_dict_pre_hook(_keep_unfitted_when_missing)
        self.register_load_state_dict_pre_hook(_scalar_scale_as_vector)

    def fit(self, local_moments: torch.Tensor, coherence_moments: list[torch.Tensor]) -> None:
        """Set the scales from summed pixel moments of smoothed local and coherence maps of normal images.

        Args:
            local_moments: Summed :func:`~anomalib_dhkd.components.scoring.map_moments` ``(3,)`` of the local map's
                pixels.
            coherence_moments: The same for each layer's smoothed coherence map.

        Raises:
            ValueError: With fewer than two pixels.

        """
        local_std = mean_and_std(local_moments, "Map coherence statistics")[1]
        coherence_std = torch.stack([mean_and_std(m, "Map coherence statistics")[1] for m in coherence_moments])
        weights = torch.tensor(self.weights, dtype=coherence_std.dtype, device=coherence_std.device)
        scale = weights * local_std / coherence_std.clamp_min(torch.finfo(torch.float32).eps)
        self.scale = scale.to(self.scale)

    def forward(self, coherences: list[torch.Tensor]) -> list[torch.Tensor]:
        """Scale each layer's coherence, to be added to the fused local map.

        Args:
            coherences: Per-layer coherence maps ``(N, 1, h_j, w_j)``.

        Returns:
            The scaled maps, all 0 until fitted.

        """
        return [scale * coherence for scale, coherence in zip(self.scale, coherences, strict=True)]

    def extra_repr(self) -> str:
        """Show the windows and the weights."""
        return f"windows={self.windows}, weights={self.weights}"


class ImageScoreFusion(nn.Module):
    """Add global evidence to the local image score: a calibrated sum over score sources.

    The sources are the local score (top fraction of the standardised score map, :class:`MapFusion`) and, per score
    layer, the squared Mahalanobis distance of the teacher latent's per-channel means and standard deviations over the
    image to their Gaussian on normal images (:class:`~anomalib_dhkd.components.scoring.GaussianDistance`). Each source
    is standardised with its mean and standard deviation on the normal training images and the results are summed, so no
    source dominates by its units. Our addition; the DHKD paper does not say how it scores images. The flow teacher's
    latent is whitened per position, so a defect that shifts a whole image a little (uneven lighting, a long crack)
    moves its latent statistics while each position stays plausible. Magnetic Tile with ImageNet weights, image AUROC
    without and with, mean of seeds 0-2: 0.940 and 0.965; without ImageNet weights it hurts (model README, "Ablation of
    the choices kept").

    Until fitted, the distances are 0 and the calibration is the identity: the score is the local score, as
    checkpoints saved without these entries scored, and such checkpoints still load.

    Args:
        latent_channels: Channels of each score layer's teacher latent.

    Example:
        Until fitted the image score is the local score:

        >>> fusion = ImageScoreFusion(latent_channels=[4])
        >>> sources = fusion.sources(torch.tensor([0.5, 1.5]), [torch.rand(2, 4, 8, 8)])
        >>> sources.shape, fusion(sources)
        (torch.Size([2, 2]), tensor([0.5000, 1.5000]))

    """

    def __init__(self, latent_channels: list[int]) -> None:
        super().__init__()
        self.distances = nn.ModuleList(GaussianDistance(2 * channels) for channels in latent_channels)
        self.source_mean: torch.Tensor
        self.source_std: torch.Tensor
        self.register_buffer("source_mean", torch.zeros(1 + len(latent_channels)))
        self.register_buffer("source_std", torch.ones(1 + len(latent_channels)))
        self.register_load_state_dict_pre_hook(_keep_unfitted_when_missing)

    def sources(self, local_score: torch.Tensor, latents: list[torch.Tensor]) -> torch.Tensor:
        """Return the raw score sources: the local score, then the distance of each of the ``K`` latents.

        Args:
            local_score: Local image scores ``(N,)``.
            latents: Teacher latents ``(N, C_k, h_k, w_k)`` of the ``K`` score layers.

        Returns:
            The sources ``(N, 1 + K)``.

        """
        distances = [distance(channel_statistics(z)) for distance, z in zip(self.distances, latents, strict=True)]
        return torch.stack([local_score, *distances], dim=1)

    def fit_calibration(self, moments: torch.Tensor) -> None:
        """Set each source's mean and standard deviation on normal images.

        Args:
            moments: Summed :func:`~anomalib_dhkd.components.scoring.map_moments` ``(3, 1 + K)`` of the sources.

        Raises:
            ValueError: With fewer than two images.

        """
        mean, std = mean_and_std(moments, "Image score calibration")
        self.source_mean = mean.to(self.source_mean)
        self.source_std = std.clamp_min(torch.finfo(torch.float32).eps).to(self.source_std)

    def forward(self, sources: torch.Tensor) -> torch.Tensor:
        """Return the image scores: the sum of the standardised sources.

        Args:
            sources: Raw sources ``(N, 1 + K)`` (:meth:`sources`).

        Returns:
            The scores ``(N,)``.

        """
        return ((sources - self.source_mean) / self.source_std).sum(dim=1)


def _scalar_scale_as_vector(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_args: Any) -> None:
    """Load-state-dict pre-hook: a one-layer :class:`MapCoherence` scale saved as a scalar loads as a vector."""
    scale = state_dict.get(prefix + "scale")
    if scale is not None and scale.dim() == 0:
        state_dict[prefix + "scale"] = scale.reshape(1)


def _keep_unfitted_when_missing(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_args: Any) -> None:
    """Load-state-dict pre-hook: entries missing from an older checkpoint keep their unfitted values."""
    for name, buffer in module.named_buffers():
        state_dict.setdefault(prefix + name, buffer)
