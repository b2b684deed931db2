"""Encoders: one per modality, all behind the same :class:`Encoder` interface."""

from twinnet.encoders.base import Encoder
from twinnet.encoders.text import DEFAULT_TEXT_MODEL, TextEncoder

ENCODERS: dict[str, type[Encoder]] = {"text": TextEncoder}

__all__ = ["DEFAULT_TEXT_MODEL", "ENCODERS", "Encoder", "TextEncoder"]
