"""Where a model's inference time goes: milliseconds per sub-module and the costliest torch operations.

python -m benchmarks.profile [--models dhkd asymmetric_ts ...] [--batch-size 1] [--image-size 256] [--rounds 20]
                             [--track pretrained] [--out results/profile] [--variants fast ...]

Each model of the suite is built as the suite builds it (untrained: the time of a forward does not depend on the
weights), put in evaluation mode and run on random images: the whole forward and its encoder alone, interleaved
(medians over the rounds); then each sub-module of its torch model, two levels deep (forward hooks, medians); then
the operations under ``torch.profiler``. The table goes to stdout and ``OUT/profile_<model>_b<batch>.json``.
``--variants`` adds the models' ablation variants of those names (:mod:`benchmarks.suite.ablations`).
"""

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from anomalib.models.components import AnomalibModule
from torch import nn
from torch.profiler import ProfilerActivity, profile

from benchmarks.suite.ablations import ABLATIONS, VARIANT_SEPARATOR, ablation_settings, variant_name
from benchmarks.suite.models import SUITE_MODELS
from benchmarks.suite.settings import RunSettings, run_settings
from benchmarks.suite.worker import TORCH_THREADS, build_model, inference_encoders

TOP_OPERATIONS = 12


def timed_modules(model: nn.Module, depth: int = 2) -> Iterator[tuple[str, nn.Module]]:
    """The named sub-modules of ``model`` down to ``depth`` levels (``encoder``, ``encoder.feature_extractor``...)."""
    for name, module in model.named_modules():
        if name and name.count(".") < depth:
            yield name, module


class ModuleTimer:
    """Forward hooks that add up the wall time of each timed sub-module per forward."""

    def __init__(self, model: nn.Module) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self._current: dict[str, float] = {}
        self._starts: dict[str, float] = {}
        self._handles = []
        for name, module in timed_modules(model):
            self._handles.append(module.register_forward_pre_hook(self._start(name)))
            self._handles.append(module.register_forward_hook(self._stop(name)))

    def _start(self, name: str) -> Any:
        def hook(*_args: Any) -> None:
            self._starts[name] = time.perf_counter()

        return hook

    def _stop(self, name: str) -> Any:
        def hook(*_args: Any) -> None:
            self._current[name] = self._current.get(name, 0.0) + time.perf_counter() - self._starts[name]

        return hook

    def end_round(self) -> None:
        """Close one forward: record each module's summed time."""
        for name, seconds in self._current.items():
            self.seconds[name].append(seconds)
        self._current = {}

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()


def median_ms(samples: list[float]) -> float:
    """Median of ``samples`` seconds, in milliseconds."""
    return round(1000 * statistics.median(samples), 2)


def profile_model(model: AnomalibModule, batch_size: int, image_size: int, rounds: int) -> dict[str, Any]:
    """Time ``model``'s torch model per sub-module and list its costliest operations."""
    network = model.model.eval()
    images = torch.rand(batch_size, 3, image_size, image_size)
    encoders = inference_encoders(network)
    with torch.inference_mode():
        for _ in range(3):
            network(images)
        whole, encoder = [], []
        for _ in range(rounds):  # without hooks, whole forward and encoder alone interleaved
            start = time.perf_counter()
            network(images)
            whole.append(time.perf_counter() - start)
            if encoders:
                start = time.perf_counter()
                encoders[0](images)
                encoder.append(time.perf_counter() - start)
        timer = ModuleTimer(network)
        for _ in range(rounds):
            network(images)
            timer.end_round()
        timer.remove()
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            for _ in range(max(1, rounds // 4)):
                network(images)
    operations = sorted(profiler.key_averages(), key=lambda event: -event.self_cpu_time_total)[:TOP_OPERATIONS]
    total_self = sum(event.self_cpu_time_total for event in profiler.key_averages())
    return {
        "forward_ms": median_ms(whole),
        "encoder_ms": median_ms(encoder) if encoder else None,
        "modules_ms": {name: median_ms(samples) for name, samples in timer.seconds.items()},
        "operations_share": {event.key: round(event.self_cpu_time_total / total_self, 3) for event in operations},
    }


def report_lines(name: str, result: dict[str, Any]) -> list[str]:
    """The profile as text: whole forward, encoder, then modules and operations by cost."""
    forward = result["forward_ms"]
    lines = [f"{name}: forward {forward} ms, encoder alone {result['encoder_ms']} ms"]
    for module, ms in sorted(result["modules_ms"].items(), key=lambda item: -item[1]):
        lines.append(f"  {module:<40} {ms:>9.2f} ms  {100 * ms / forward:5.1f} %")
    lines.append("  operations (share of self CPU time):")
    lines += [f"    {op:<38} {100 * share:5.1f} %" for op, share in result["operations_share"].items()]
    return lines


def main(argv: list[str] | None = None) -> None:
    """Profile each chosen model and write its table and JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["dhkd"], choices=sorted(SUITE_MODELS))
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--track", choices=["pretrained", "none"], default="pretrained")
    parser.add_argument("--out", type=Path, default=Path("results/profile"))
    variants = sorted({variant for model in ABLATIONS.values() for variant in model})
    parser.add_argument("--variants", nargs="+", default=[], choices=variants, help="ablation variants too")
    args = parser.parse_args(argv)
    torch.set_num_threads(TORCH_THREADS)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, settings in configurations(args.models, args.variants, args.track, args.image_size):
        model = build_model(name.split(VARIANT_SEPARATOR)[0], settings)
        result = profile_model(model, args.batch_size, args.image_size, args.rounds)
        print("\n".join(report_lines(name, result)), flush=True)
        path = args.out / f"profile_{name}_b{args.batch_size}.json"
        path.write_text(json.dumps({"model": name, "batch_size": args.batch_size, **result}, indent=1) + "\n")


def configurations(
    models: list[str], variants: list[str], track: str, image_size: int
) -> list[tuple[str, RunSettings]]:
    """Each model's suite settings, then those of its chosen ablation variants that change it in ``track``."""
    chosen = []
    for model in models:
        chosen.append((model, run_settings(model, track, image_size, seed=0, quick=False)))
        for variant in (v for v in variants if v in ABLATIONS.get(model, {})):
            settings = ablation_settings(model, variant, track, image_size, seed=0)
            if settings is not None:
                chosen.append((variant_name(model, variant), settings))
    return chosen


if __name__ == "__main__":
    main()
