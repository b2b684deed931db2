"""Record augmentation for training: small, label-preserving edits to records.

Four edits, each switched on by its probability (0 = off):

- ``token_deletion``: each token of the serialised text is dropped with this probability (at least one
  token is always kept).
- ``span_shuffle``: with this probability, a span of 2–4 neighbouring tokens is put in a random order
  (attribute order and word order vary between sources).
- ``attribute_drop``: each attribute of a mapping record is emptied with this probability (at least one
  non-empty attribute is kept); sources often miss a field.
- ``value_swap``: for two records of the same entity, with this probability one attribute's values are
  exchanged between them. Both still describe the entity, so the pair stays "same" while the model can
  no longer rely on one attribute being spelt one way on one side.

Everything draws from the ``numpy.random.Generator`` passed in, so the same seed gives the same edits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from twinnet.data.records import Record, RecordSerializer, clean_text
from twinnet.errors import TwinnetError


@dataclass
class RecordAugmenter:
    """Probabilities of the four edits (see the module docstring); all 0 = no augmentation."""

    token_deletion: float = 0.0
    span_shuffle: float = 0.0
    attribute_drop: float = 0.0
    value_swap: float = 0.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not 0.0 <= float(value) <= 1.0:
                raise TwinnetError(f"augmentation probability {name} must be between 0 and 1, got {value}")

    @classmethod
    def from_spec(cls, spec: str | Mapping[str, float] | RecordAugmenter | None) -> RecordAugmenter | None:
        """``"token_deletion=0.1,attribute_drop=0.2"`` (or a dict, or an augmenter) → augmenter; None stays None."""
        if spec is None or isinstance(spec, RecordAugmenter):
            return spec
        if isinstance(spec, str):
            items = {}
            for part in filter(None, (p.strip() for p in spec.split(","))):
                name, sep, value = part.partition("=")
                try:
                    items[name.strip()] = float(value) if sep else 0.1
                except ValueError:
                    raise TwinnetError(f"augmentation {part!r}: the probability must be a number") from None
            spec = items
        known = set(asdict(cls()))
        unknown = [k for k in spec if k not in known]
        if unknown:
            raise TwinnetError(f"unknown augmentation {unknown[0]!r}; choose from {', '.join(sorted(known))}")
        return cls(**spec)

    @property
    def active(self) -> bool:
        return any(v > 0 for v in asdict(self).values())

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    # ------------------------------------------------------------------ record-level edits
    def swap_values(self, first: Record, second: Record, rng: np.random.Generator) -> tuple[Record, Record]:
        """Exchange one shared attribute's values between two records of the same entity."""
        if not (isinstance(first, Mapping) and isinstance(second, Mapping)) or rng.random() >= self.value_swap:
            return first, second
        shared = [k for k in first if k in second and k != "id" and clean_text(first[k]) and clean_text(second[k])]
        if not shared:
            return first, second
        name = shared[int(rng.integers(len(shared)))]
        a, b = dict(first), dict(second)
        a[name], b[name] = second[name], first[name]
        return a, b

    def drop_attributes(self, record: Record, rng: np.random.Generator) -> Record:
        if not isinstance(record, Mapping) or self.attribute_drop <= 0:
            return record
        filled = [k for k, v in record.items() if k != "id" and clean_text(v)]
        dropped = [k for k in filled if rng.random() < self.attribute_drop]
        if len(dropped) == len(filled):  # keep one attribute: an empty record says nothing
            dropped = dropped[:-1]
        return {k: (None if k in dropped else v) for k, v in record.items()}

    # ------------------------------------------------------------------ text-level edits
    def edit_text(self, text: str, rng: np.random.Generator) -> str:
        tokens = text.split()
        if self.token_deletion > 0 and len(tokens) > 1:
            keep = rng.random(len(tokens)) >= self.token_deletion
            if not keep.any():
                keep[int(rng.integers(len(tokens)))] = True
            tokens = [t for t, k in zip(tokens, keep) if k]
        if self.span_shuffle > 0 and len(tokens) > 2 and rng.random() < self.span_shuffle:
            length = int(rng.integers(2, min(4, len(tokens)) + 1))
            start = int(rng.integers(0, len(tokens) - length + 1))
            span = tokens[start: start + length]
            tokens[start: start + length] = [span[i] for i in rng.permutation(length)]
        return " ".join(tokens)

    def text(self, record: Record, serializer: RecordSerializer, rng: np.random.Generator) -> str:
        """The augmented text of one record: attributes dropped, then serialised, then token edits."""
        return self.edit_text(serializer(self.drop_attributes(record, rng)), rng)
