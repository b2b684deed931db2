"""Records and how they become text.

A record is either a plain string or a mapping of attribute name to value. The
:class:`RecordSerializer` turns a mapping into the one string the text encoder reads. It is part of
a saved model's configuration, so a loaded model serialises new records exactly as in training.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Union

import pandas as pd

Record = Union[str, Mapping[str, Any]]

STYLES = ("values", "colval")
# a hyphen or slash inside a code (not between two digits: 33-1/3 and 2-1/2 are numbers)
_CODE_JOINER = re.compile(r"(?<=[A-Za-z])[-/](?=[0-9A-Za-z])|(?<=[0-9])[-/](?=[A-Za-z])")
_LETTER_DIGIT = re.compile(r"(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])")


def split_codes(text: str) -> str:
    """Write product codes one way: ``KDL-40V5100``, ``kdl40v5100`` and ``kdl 40v5100`` all become
    ``kdl 40 v 5100``, so a subword tokenizer sees the same pieces whatever the source's spelling."""
    return _LETTER_DIGIT.sub(" ", _CODE_JOINER.sub("", text))


def is_missing(value: Any) -> bool:
    """True for None, float NaN and pandas' missing markers (``pd.NA``, ``pd.NaT``)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:  # pandas.NA / NaT without importing pandas here
        return bool(value != value)  # noqa: PLR0124 - NaN-like values are not equal to themselves
    except (TypeError, ValueError):
        return False


def clean_text(value: Any) -> str:
    """Normalise one attribute value: NFC Unicode, collapsed whitespace; missing becomes ''.

    Lone surrogates (which cannot be encoded as UTF-8) are replaced rather than crashing the tokenizer.
    """
    if is_missing(value):
        return ""
    text = value if isinstance(value, str) else str(value)
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


@dataclass
class RecordSerializer:
    """Turn a record into text.

    Parameters
    ----------
    attributes:
        Attributes to use, in this order. ``None`` uses every attribute of the record in its own
        order (identifiers named ``id`` are always skipped).
    style:
        ``"values"`` joins the values with spaces (``sony turntable 199.0``); ``"colval"`` writes
        Ditto's ``COL name VAL sony turntable COL price VAL 199.0``.
    max_chars_per_attribute:
        Long free-text attributes (product descriptions) are cut to this many characters so that
        they cannot crowd the short, decisive ones out of the encoder's window. ``0`` = no limit.
    split_codes:
        Normalise product codes (see :func:`split_codes`): drop ``-`` and ``/`` inside codes and
        split letters from digits. Helps product matching, where the code decides.
    """

    attributes: list[str] | None = None
    style: str = "values"
    max_chars_per_attribute: int = 0
    skip: list[str] = field(default_factory=lambda: ["id"])
    split_codes: bool = False

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"serialisation style must be one of {STYLES}, got {self.style!r}")

    def __call__(self, record: Record) -> str:
        if isinstance(record, Mapping):
            text = self._join(record)
        elif is_missing(record):
            raise ValueError("record is missing (None/NaN)")
        else:
            text = clean_text(record)
        return " ".join(split_codes(text).split()) if self.split_codes else text

    def _join(self, record: Mapping[str, Any]) -> str:
        names = self.attributes if self.attributes is not None else [k for k in record if k not in self.skip]
        parts = []
        for name in names:
            value = clean_text(record.get(name))
            if self.max_chars_per_attribute and len(value) > self.max_chars_per_attribute:
                value = value[: self.max_chars_per_attribute].rsplit(" ", 1)[0]
            if self.style == "colval":
                parts.append(f"COL {name} VAL {value}".rstrip())
            elif value:
                parts.append(value)
        return " ".join(parts)

    def serialize_many(self, records: Sequence[Record]) -> list[str]:
        out = []
        for i, record in enumerate(records):
            try:
                out.append(self(record))
            except ValueError as exc:
                raise ValueError(f"item {i}: {exc}") from None
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecordSerializer:
        names = ("attributes", "style", "max_chars_per_attribute", "skip", "split_codes")
        return cls(**{k: data[k] for k in names if k in data})


def parse_colval(text: str) -> dict[str, str]:
    """Parse Ditto's ``COL a VAL v COL b VAL w`` into ``{"a": "v", "b": "w"}``."""
    record: dict[str, str] = {}
    for chunk in text.split("COL ")[1:]:
        name, sep, value = chunk.partition(" VAL")
        if not sep:
            raise ValueError(f"'COL {name.strip()[:30]}' has no VAL")
        record[name.strip()] = value.strip()
    return record
