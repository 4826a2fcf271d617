"""Foreground of an object image: the pixels that differ from the background seen at the image border.

Industrial parts are photographed on a plain background that fills the border of the frame. The background colour
is the median colour of a border strip; a pixel is foreground when its colour distance to it exceeds Otsu's threshold
of that image's distances (the threshold that best splits them into two classes). A texture or a part that fills the
frame has no plain background: when the border's colours vary almost as much as the image's, or the foreground
found is below ``min_share`` or above ``max_share`` of the image, the whole image counts as foreground.
"""

import torch
import torch.nn.functional as F  # noqa: N812

OTSU_BINS = 64


def otsu_threshold(values: torch.Tensor, bins: int = OTSU_BINS) -> torch.Tensor:
    """Otsu's threshold of each row of ``values`` ``(N, P)``: the cut maximising the between-class variance.

    Args:
        values: One row of non-negative values per image.
        bins: Histogram bins between each row's minimum and maximum.

    Returns:
        ``(N,)`` thresholds; a row of equal values gets its value.

    Example:
        >>> values = torch.tensor([[0.1, 0.12, 0.11, 0.9, 0.95, 0.92]])
        >>> 0.12 < float(otsu_threshold(values)[0]) < 0.9
        True

    """
    low, high = values.min(dim=1, keepdim=True).values, values.max(dim=1, keepdim=True).values
    span = (high - low).clamp_min(torch.finfo(values.dtype).eps)
    indices = ((values - low) / span * (bins - 1)).round().long()
    counts = torch.zeros(values.shape[0], bins, dtype=values.dtype, device=values.device)
    counts.scatter_add_(1, indices, torch.ones_like(values))
    centres = torch.arange(bins, dtype=values.dtype, device=values.device)
    weight_below = counts.cumsum(dim=1)
    weight_above = values.shape[1] - weight_below
    mass_below = (counts * centres).cumsum(dim=1)
    mean_below = mass_below / weight_below.clamp_min(1)
    mean_above = (mass_below[:, -1:] - mass_below) / weight_above.clamp_min(1)
    between = weight_below * weight_above * (mean_below - mean_above).pow(2)
    best = between.argmax(dim=1, keepdim=True).to(values.dtype)
    return (low + (best + 0.5) / (bins - 1) * span).squeeze(1)


def foreground_mask(
    images: torch.Tensor,
    border: int = 8,
    min_share: float = 0.05,
    max_share: float = 0.95,
    max_border_spread: float = 0.5,
) -> torch.Tensor:
    """Estimate the object in each image: colours far from the border's median colour, holes closed.

    Args:
        images: ``(N, C, H, W)`` images with values in ``[0, 1]``.
        border: Width in pixels of the border strip that shows the background.
        min_share: Below this share of foreground pixels the whole image is foreground.
        max_share: Above this share the whole image is foreground (a part filling the frame).
        max_border_spread: The border is plain background only if its colours vary less than this share of the
            image's variation around the border colour; otherwise (a texture) the whole image is foreground.

    Returns:
        ``(N, 1, H, W)`` boolean mask.

    Example:
        >>> images = torch.zeros(1, 3, 32, 32)
        >>> images[:, :, 8:24, 8:24] = 0.8
        >>> mask = foreground_mask(images)
        >>> bool(mask[0, 0, 16, 16]), bool(mask[0, 0, 2, 2])
        (True, False)

    """
    strip = torch.cat(
        [
            images[..., :border, :].flatten(2),
            images[..., -border:, :].flatten(2),
            images[..., :, :border].flatten(2),
            images[..., :, -border:].flatten(2),
        ],
        dim=2,
    )
    background = strip.median(dim=2).values[..., None, None]
    distance = (images - background).abs().mean(dim=1, keepdim=True)
    border_spread = (strip - background[..., 0]).abs().mean(dim=(1, 2))
    plain_border = border_spread < max_border_spread * distance.flatten(1).mean(dim=1)
    threshold = otsu_threshold(distance.flatten(1))[:, None, None, None]
    mask = distance > threshold
    closed = -F.max_pool2d(-F.max_pool2d(mask.float(), 5, stride=1, padding=2), 5, stride=1, padding=2)
    share = closed.flatten(1).mean(dim=1)[:, None, None, None]
    whole_image = (share < min_share) | (share > max_share) | ~plain_border[:, None, None, None]
    return (closed > 0.5) | whole_image
