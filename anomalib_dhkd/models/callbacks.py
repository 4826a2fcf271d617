"""Lightning callbacks shared by the plugin's models."""

from typing import Any

import torch
from lightning.pytorch import Callback


class RandomStateCheckpoint(Callback):
    """Save torch's random number generator states in every checkpoint and restore them on resume.

    Lightning restores weights, optimiser, epoch and step, but not the generators that draw the shuffling order
    and the training noise. Without them a run resumed with ``ckpt_path`` continues with different batches and noise
    than the uninterrupted run; with them, it continues exactly as that run would have (on CPU).
    """

    def state_dict(self) -> dict[str, Any]:
        """Capture the CPU generator and, when present, every CUDA generator."""
        state = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the generators captured by :meth:`state_dict`."""
        torch.set_rng_state(state_dict["cpu"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
