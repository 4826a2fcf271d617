"""Width of a hidden layer relative to its input, shared by the students and teachers that take a ``hidden_ratio``."""

MIN_HIDDEN_CHANNELS = 8


def scaled_channels(channels: int, ratio: float) -> int:
    """Return ``channels * ratio`` rounded to the nearest integer, at least :data:`MIN_HIDDEN_CHANNELS`.

    Example:
        >>> scaled_channels(320, 0.5), scaled_channels(40, 1.0), scaled_channels(16, 0.25)
        (160, 40, 8)

    """
    return max(MIN_HIDDEN_CHANNELS, round(channels * ratio))
