"""Encoders: one per modality, all behind the same :class:`Encoder` interface."""

from twinnet.encoders.base import Encoder
from twinnet.encoders.face import FaceEncoder
from twinnet.encoders.image import ARCHITECTURES, Augmentation, ImageEncoder
from twinnet.encoders.text import DEFAULT_TEXT_MODEL, TextEncoder

ENCODERS: dict[str, type[Encoder]] = {"text": TextEncoder, "image": ImageEncoder, "face": FaceEncoder}

__all__ = ["ARCHITECTURES", "DEFAULT_TEXT_MODEL", "ENCODERS", "Augmentation", "Encoder", "FaceEncoder", "ImageEncoder",
           "TextEncoder"]
