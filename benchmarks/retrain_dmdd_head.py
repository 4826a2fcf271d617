"""Train new segmentation heads on trained Dmdd students, to compare kinds of head without training the student again.

Dmdd's head learns from detached discrepancy maps, so a trained student can carry other heads. For each kept checkpoint
this script freezes the network, trains every chosen kind of head from scratch on the same batches of synthetic
anomalies (the model's own synthesiser, loss, optimiser settings and epochs), and evaluates the model's map (the head's
probabilities times the normality discrepancy) on the test images. ``own`` is the checkpoint's own head, trained with
the model's schedule. Heads learn from the frozen student in evaluation mode (running batch-norm statistics, as at test
time); a head named ``..._batch_statistics`` learns from a copy of it in training mode (batch statistics of each
training batch, as a head trained jointly with the student sees them), which tells whether that mismatch costs accuracy.
Train with ``python -m benchmarks.run --models dmdd --keep-checkpoints DIR``, then::

    python -m benchmarks.retrain_dmdd_head DIR --out results/retrain_dmdd_head.jsonl

Metrics as in :mod:`benchmarks.rescore`; one JSON line per (checkpoint, head), resumable. Heads are trained in one
pass, so a head's figures depend on which other heads are chosen (they share the random number stream).
"""

import copy
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import MVTecAD
from torch import nn
from tqdm import trange

from anomalib_dhkd.components.losses import segmentation_loss
from anomalib_dhkd.components.scoring.segmentation import MultiPerceptionHead, PixelwiseHead
from anomalib_dhkd.models import Dmdd
from anomalib_dhkd.models.dmdd.torch_model import DmddModel
from benchmarks.rescore import cache_outputs, map_metrics, rescore_main
from benchmarks.suite.settings import BATCH_SIZE, EVAL_BATCH_SIZE

SEED = 0


def local_head(channels: int) -> MultiPerceptionHead:
    """The multi-perception head without its dilated context (residual block and CBAM attention only)."""
    head = MultiPerceptionHead(channels)
    head.context = nn.Identity()
    return head


def log_input(head: nn.Module) -> nn.Module:
    """``head`` reading the logarithm of the discrepancies."""
    return nn.Sequential(LogDiscrepancy(), head)


class LogDiscrepancy(nn.Module):
    """``log`` of the discrepancy maps, clamped at 1e-4."""

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Return the element-wise logarithm."""
        return maps.clamp_min(1e-4).log()


BATCH_STATISTICS = "_batch_statistics"
HEADS: dict[str, Callable[[int], nn.Module]] = {
    "multi_perception": MultiPerceptionHead,
    "multi_perception_log": lambda channels: log_input(MultiPerceptionHead(channels)),
    "pixelwise": PixelwiseHead,
    "pixelwise" + BATCH_STATISTICS: PixelwiseHead,
    "local": local_head,
}
VARIANTS = ["own", *HEADS]


def train_heads(model: Dmdd, root: str, category: str, names: list[str]) -> dict[str, nn.Module]:
    """Train one head of each kind on the frozen network, all on the same batches; return them in eval mode."""
    network: DmddModel = model.model
    channels = 2 * len(network.decouplers)
    heads = {name: HEADS[name](channels).to(memory_format=torch.channels_last) for name in names}
    optimizers = {
        name: torch.optim.Adam(head.parameters(), lr=model.learning_rate, weight_decay=1e-5)
        for name, head in heads.items()
    }
    datamodule = MVTecAD(
        root=root, category=category, train_batch_size=BATCH_SIZE, eval_batch_size=EVAL_BATCH_SIZE, num_workers=1
    )
    datamodule.setup()
    # Training mode updates the running statistics: a copy keeps the evaluated network as it was saved.
    students = {
        batch_statistics: copy.deepcopy(network).train() if batch_statistics else network
        for batch_statistics in {name.endswith(BATCH_STATISTICS) for name in heads}
    }
    transform = model.pre_processor.transform
    for _ in trange(model.trainer_arguments["max_epochs"], desc="epochs", leave=False):
        for batch in datamodule.train_dataloader():
            images = transform(batch.image)
            with torch.no_grad():
                augmented, masks = model.synthesize_anomalies(images, model.anomalies)
                _, teacher = network.paired_teacher_features(images, augmented, masks)
                maps = {
                    batch_statistics: student.discrepancy_maps(teacher, *student.decoupled_features(augmented))
                    for batch_statistics, student in students.items()
                }
            for name, head in heads.items():
                logits = head.train()(maps[name.endswith(BATCH_STATISTICS)])
                loss = segmentation_loss(logits, F.interpolate(masks, size=logits.shape[-2:], mode="bilinear"))
                optimizers[name].zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(head.parameters(), 1.0)
                optimizers[name].step()
    return {name: head.eval() for name, head in heads.items()}


def score_heads(path: Path, root: str, category: str, variants: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(head, metrics)`` of one Dmdd checkpoint's student with each chosen head."""
    start = time.perf_counter()
    torch.manual_seed(SEED)
    model = Dmdd.load_from_checkpoint(path, map_location="cpu").eval()
    heads = train_heads(model, root, category, [name for name in variants if name != "own"])
    if "own" in variants:
        heads = {"own": model.model.head, **heads}
    cached = cache_outputs(model, root, category, lambda images: model.model.head_maps(images)[1])
    discrepancies = torch.cat(cached.test)
    normality = DmddModel.normality_discrepancy(discrepancies)
    print(f"{path} ({time.perf_counter() - start:.0f} s)", flush=True)
    for name, head in heads.items():
        with torch.no_grad():
            probabilities = torch.cat([head(part).sigmoid() for part in discrepancies.split(EVAL_BATCH_SIZE)])
            anomaly_map, scores = model.model.map_fusion(
                [probabilities * normality], None, tuple(cached.masks.shape[-2:])
            )
        yield name, map_metrics(scores, anomaly_map[:, 0], cached.masks, cached.labels, cached.paths)


def main(argv: list[str] | None = None) -> None:
    """Train every chosen head on every Dmdd checkpoint; print and append one JSON line each."""
    description = __doc__.splitlines()[0]
    rescore_main(argv, description, "dmdd", VARIANTS, Path("results/retrain_dmdd_head.jsonl"), score_heads, "own")


if __name__ == "__main__":
    main()
