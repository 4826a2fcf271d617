"""Lightning callbacks shared by the plugin's models."""

from typing import Any

import torch
from lightning.pytorch import Callback


class RandomStateCheckpoint(Callback):
    """Save torch's random number generator states in every checkpoint and restore them on resume.

    Lightning restores weights, optimiser, epoch and step, but not the generators that draw the shuffling order
    and the training noise. Without them a run resumed with ``ckpt_path`` continues with different batches and noise
    than the uninterrupted run; with them, it continues exactly as that run would have (on CPU).

    Example:
        >>> callback = RandomStateCheckpoint()
        >>> state = callback.state_dict()
        >>> first = torch.rand(3)
        >>> callback.load_state_dict(state)
        >>> torch.equal(torch.rand(3), first)
        True

    """

    def state_dict(self) -> dict[str, Any]:
        """Capture the CPU generator and, when present, every CUDA generator.

        Returns:
            ``{"cpu": state}``, plus ``"cuda"``: one state per device when CUDA is available.

        """
        state = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the generators captured by :meth:`state_dict`.

        Args:
            state_dict: The saved states; CUDA states are skipped on a machine without CUDA.

        """
        torch.set_rng_state(state_dict["cpu"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
