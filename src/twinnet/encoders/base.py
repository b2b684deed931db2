"""What every encoder (text, image, record) provides to :class:`~twinnet.model.SiameseModel`.

An encoder turns raw inputs into *features* (tensors ready for a forward pass) and features into
un-normalised embeddings. Normalisation, scoring and calibration belong to the model, so the rest
of twinnet never branches on modality.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from twinnet.errors import TwinnetError

WEIGHTS_FILE = "model.safetensors"


class Encoder(nn.Module):
    """Base class: subclasses implement ``prepare``, ``collate``, ``forward``, ``save`` and ``load``."""

    modality: str = "abstract"

    def prepare(self, items: Sequence[Any]) -> list[Any]:
        """Per-item preprocessing done once (tokenising, decoding images)."""
        raise NotImplementedError

    def collate(self, prepared: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Stack prepared items into one batch of features."""
        raise NotImplementedError

    def item_cost(self, prepared: Any) -> int:
        """A size used to bucket similar items into the same batch (e.g. token count)."""
        return 1

    def reseed(self, seed: int) -> None:
        """Restart any random stream used in preprocessing (e.g. training-time augmentation); default: none."""

    @property
    def embedding_dim(self) -> int:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def save(self, folder: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, folder: Path, config: dict[str, Any]) -> Encoder:
        raise NotImplementedError


def save_weights(encoder: nn.Module, folder: Path, kind: str) -> None:
    """Write an encoder's state dict as ``model.safetensors`` (for encoders whose weights are all their own)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_file(tensors, str(Path(folder) / WEIGHTS_FILE), metadata={"format": "pt", "twinnet_encoder": kind})


def load_weights(encoder: nn.Module, folder: Path, kind: str) -> None:
    """Fill an encoder built from ``config.json`` with ``model.safetensors``; a missing file or one that does
    not fit is a one-line error naming it."""
    from safetensors.torch import load_file

    weights = Path(folder) / WEIGHTS_FILE
    if not weights.exists():
        raise TwinnetError(f"no {WEIGHTS_FILE} in the model folder", file=folder)
    try:
        encoder.load_state_dict(load_file(str(weights)), strict=True)
    except (RuntimeError, OSError) as exc:
        raise TwinnetError(f"weights do not fit the {kind} encoder in config.json: {str(exc).splitlines()[0]}",
                           file=weights) from None
