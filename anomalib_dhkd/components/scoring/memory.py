"""Nearest-neighbour distance of local encoder features to a memory of normal patches, beside the discrepancy.

A student that reproduces its teacher everywhere it has seen similar features misses defects whose features are
each plausible but not at that place or in that arrangement (MVTec transistor's misplaced or cut parts). A memory of
the normal images' local features answers "has such a patch ever been seen?" directly, as PatchCore does (Roth et
al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022, Sec. 3.1: locally aware patch features,
Sec. 3.2: nearest-neighbour anomaly score). Our addition to the family's map; no paper of the family has it.

The memory is a uniform random sample of the training images' patches (PatchCore's greedy coreset selection costs
an hour per large dataset on this CPU), drawn in one streaming pass with a fixed seed: each patch gets a random key
and the ``size`` smallest keys are kept.
"""

from collections.abc import Iterable

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.components.base import DynamicBufferMixin
from torch import nn

from anomalib_dhkd.components.scoring.fusion import top_fraction_mean
from anomalib_dhkd.components.scoring.position_statistics import mean_and_std


def local_patches(features: list[torch.Tensor]) -> torch.Tensor:
    """Return locally aware patch features: each layer 3 x 3 averaged, upsampled to the first's size, concatenated.

    PatchCore, Sec. 3.1: the average over a 3 x 3 neighbourhood widens each feature's receptive field without
    losing resolution.

    Args:
        features: Per-layer features ``(N, C_k, h_k, w_k)``, the finest first.

    Returns:
        Patch features ``(N, sum C_k, h_0, w_0)``.

    Example:
        >>> local_patches([torch.rand(2, 4, 8, 8), torch.rand(2, 6, 4, 4)]).shape
        torch.Size([2, 10, 8, 8])

    """
    size = features[0].shape[-2:]
    pooled = [F.avg_pool2d(f, kernel_size=3, stride=1, padding=1, count_include_pad=False) for f in features]
    return torch.cat([F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pooled], dim=1)


class PatchMemory(DynamicBufferMixin, nn.Module):
    """A random sample of normal patch features and each new patch's distance to its nearest neighbour in it.

    Args:
        size: Largest number of patches kept.
        seed: Seed of the random sample, so that a fit is reproducible.

    Raises:
        ValueError: If ``size`` is not positive.

    Example:
        >>> memory = PatchMemory(size=64)
        >>> memory.fit([torch.rand(2, 8, 4, 4)])
        >>> memory.bank.shape, memory(torch.rand(1, 8, 4, 4)).shape
        (torch.Size([32, 8]), torch.Size([1, 1, 4, 4]))

    """

    def __init__(self, size: int, seed: int = 0) -> None:
        super().__init__()
        if size < 1:
            msg = f"The patch memory must keep at least one patch, got size {size}."
            raise ValueError(msg)
        self.size = size
        self.seed = seed
        self.bank: torch.Tensor
        self.register_buffer("bank", torch.empty(0, 0))

    @torch.no_grad()
    def fit(self, batches: Iterable[torch.Tensor]) -> None:
        """Keep a uniform random sample of at most ``size`` patches of ``batches``.

        Args:
            batches: Patch features ``(N, C, h, w)`` of normal images (:func:`local_patches`).

        Raises:
            ValueError: If ``batches`` holds no patch.

        """
        generator = torch.Generator().manual_seed(self.seed)
        kept, keys = None, None
        for batch in batches:
            patches = batch.detach().permute(0, 2, 3, 1).flatten(end_dim=2).float()
            batch_keys = torch.rand(patches.shape[0], generator=generator).to(patches.device)
            kept = patches if kept is None else torch.cat([kept, patches])
            keys = batch_keys if keys is None else torch.cat([keys, batch_keys])
            if kept.shape[0] > self.size:
                smallest = keys.topk(self.size, largest=False).indices
                kept, keys = kept[smallest], keys[smallest]
        if kept is None or kept.shape[0] == 0:
            msg = "The patch memory needs normal training images; the given batches were empty."
            raise ValueError(msg)
        self.bank = kept.to(self.bank)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Return each patch's Euclidean distance to its nearest neighbour in the memory.

        Written as ``|x|^2 - 2 x.m + |m|^2`` with a matrix product, which every export runtime supports.

        Args:
            patches: Patch features ``(N, C, h, w)``.

        Returns:
            Distances ``(N, 1, h, w)``; zero everywhere until fitted.

        """
        if self.bank.numel() == 0:
            return patches.new_zeros(patches.shape[0], 1, *patches.shape[-2:])
        queries = patches.flatten(start_dim=2).transpose(1, 2)  # (N, h w, C)
        squared = queries.pow(2).sum(-1, keepdim=True) - 2 * queries @ self.bank.T + self.bank.pow(2).sum(-1)
        nearest = squared.amin(dim=-1).clamp_min(0).sqrt()
        return nearest.view(patches.shape[0], 1, *patches.shape[-2:])

    def extra_repr(self) -> str:
        """Show the size and the seed."""
        return f"size={self.size}, seed={self.seed}"


class MemoryMap(nn.Module):
    """The patch memory's distances as an addition to the anomaly map and to the image score.

    Calibrated on normal images held out of the memory (on an image in the memory the distances would be near
    zero): the distance map is scaled to the local map's standard deviation there, times ``weight``, and added to it;
    the top ``score_fraction`` mean of the smoothed distance map, standardised with its mean and standard deviation
    there, is added to the image score. Until fitted the memory is empty and both additions are 0.

    Args:
        size: Most patches the memory keeps.
        weight: Weight of the distance map relative to the local map's spread on normal images, positive.
        score_fraction: Share of the smoothed distance map's highest values averaged into its image score.

    Raises:
        ValueError: If ``weight`` or ``size`` is not positive.

    Example:
        >>> from anomalib_dhkd.components.scoring import map_moments
        >>> memory_map = MemoryMap(size=64, weight=0.5, score_fraction=0.01)
        >>> pixels = map_moments(torch.tensor([0.0, 2.0])), map_moments(torch.tensor([0.0, 1.0]))
        >>> memory_map.fit_calibration(*pixels, map_moments(torch.tensor([1.0, 2.0, 3.0])))
        >>> memory_map.scale, memory_map.score(torch.full((1, 1, 4, 4), 3.0))
        (tensor(1.), tensor([1.]))

    """

    def __init__(self, size: int, weight: float, score_fraction: float) -> None:
        super().__init__()
        if weight <= 0:
            msg = f"memory_weight must be positive (no memory_layers turn the memory off), got {weight}."
            raise ValueError(msg)
        self.memory = PatchMemory(size)
        self.weight = weight
        self.score_fraction = score_fraction
        self.scale: torch.Tensor
        self.score_mean: torch.Tensor
        self.score_std: torch.Tensor
        self.register_buffer("scale", torch.tensor(0.0))
        self.register_buffer("score_mean", torch.tensor(0.0))
        self.register_buffer("score_std", torch.tensor(1.0))

    def distances(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Return the unscaled nearest-neighbour distances ``(N, 1, h_0, w_0)`` of the memory layers' features."""
        return self.memory(local_patches(features))

    def fit_calibration(
        self, local_moments: torch.Tensor, distance_moments: torch.Tensor, score_moments: torch.Tensor
    ) -> None:
        """Set the map's scale and the score's standardisation from summed moments of held-out normal images.

        Args:
            local_moments: Summed :func:`~anomalib_dhkd.components.scoring.map_moments` ``(3,)`` of the smoothed
                local map's pixels.
            distance_moments: The same for the smoothed distance map.
            score_moments: Summed moments ``(3,)`` of the images' distance scores (:meth:`raw_score`).

        Raises:
            ValueError: With fewer than two held-out images.

        """
        local_std = mean_and_std(local_moments, "Patch memory statistics")[1]
        distance_std = mean_and_std(distance_moments, "Patch memory statistics")[1]
        score_mean, score_std = mean_and_std(score_moments, "Patch memory statistics")
        eps = torch.finfo(torch.float32).eps
        self.scale = (self.weight * local_std / distance_std.clamp_min(eps)).to(self.scale)
        self.score_mean = score_mean.to(self.score_mean)
        self.score_std = score_std.clamp_min(eps).to(self.score_std)

    def raw_score(self, smoothed_distances: torch.Tensor) -> torch.Tensor:
        """Return the top ``score_fraction`` mean ``(N,)`` of smoothed distance maps ``(N, 1, H, W)``."""
        return top_fraction_mean(smoothed_distances, self.score_fraction)

    def score(self, smoothed_distances: torch.Tensor) -> torch.Tensor:
        """Return the standardised image score ``(N,)`` of smoothed distance maps ``(N, 1, H, W)``."""
        return (self.raw_score(smoothed_distances) - self.score_mean) / self.score_std

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        """Return the scaled distance map, to be added to the local map."""
        return self.scale * distances

    def extra_repr(self) -> str:
        """Show the weight."""
        return f"weight={self.weight}, score_fraction={self.score_fraction}"
