"""Export a trained text model to ONNX, with pooling and normalisation inside the graph.

The exported graph maps token ids and an attention mask to the model's final embedding, so a runtime needs
only a tokenizer and ONNX Runtime (see :class:`twinnet.runtime.OnnxSiameseModel`). Every export is checked
against the PyTorch model on sample inputs before it is kept: fp32 must agree to 1e-4 per coordinate, int8
(dynamic quantisation of the weights) to a cosine of 0.99 per input.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from twinnet.errors import TwinnetError
from twinnet.model import SiameseModel
from twinnet.scoring import cosine_rows

ONNX_DIR = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
REPORT_FILE = "export.json"
FP32_MAX_ABS_DIFF = 1e-4
INT8_MIN_COSINE = 0.99

# Used for the parity check when the caller gives no sample: short and long, codes, digits, non-ASCII.
DEFAULT_SAMPLE = [
    "sony bravia 40 ' lcd hdtv kdl40v5100",
    "samsung 40 ' lcd hdtv ln40b650 black",
    "apple ipod nano 8gb silver mb598ll/a",
    "canon powershot sd1100 is digital elph camera 8.0 megapixel 3x optical zoom",
    "a",
    "Grüße aus Köln — naïve café, 東京, émoji 🙂",
    "logitech harmony 670 universal remote control 966195-0403",
    "the quick brown fox jumps over the lazy dog " * 8,
]


class _EmbeddingGraph(nn.Module):
    """Token ids + attention mask -> final embedding (encoder, pooling, normalisation)."""

    def __init__(self, model: SiameseModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model({"input_ids": input_ids, "attention_mask": attention_mask})


def export_onnx(model: SiameseModel | str | os.PathLike[str], folder: str | os.PathLike[str] | None = None, *,
                quantize: str | None = None, sample: Sequence[Any] | None = None,
                opset: int = 17) -> dict[str, Any]:
    """Write ``<folder>/onnx/model.onnx`` (and ``model_int8.onnx`` with ``quantize="int8"``) and a parity report.

    ``model`` is a :class:`SiameseModel` or the path of a saved model folder; ``folder`` defaults to that path.
    ``sample``: records (texts or attribute maps) for the parity check; default: built-in examples.
    Returns the report (also written to ``onnx/export.json``). Raises :class:`TwinnetError` when a parity
    check fails; nothing is left behind in that case.
    """
    if quantize not in (None, "int8"):
        raise TwinnetError(f"quantize must be 'int8' or omitted, got {quantize!r}")
    if not isinstance(model, SiameseModel):
        folder = folder or model
        model = SiameseModel.load(model)
    if folder is None:
        raise TwinnetError("give the model folder to export into")
    if model.input_modality != "text":
        raise TwinnetError(f"ONNX export supports text models; this one encodes {model.input_modality}s")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise TwinnetError("ONNX export needs onnx and onnxruntime: pip install 'twinnet[onnx]'") from None
    model = model.eval().cpu()
    target = Path(folder) / ONNX_DIR
    target.mkdir(parents=True, exist_ok=True)
    # The graph starts at token ids, so the check feeds both sides the model's serialised text (with e.g.
    # split_codes applied), exactly what the runtime will tokenise.
    records = [r for r in (sample or DEFAULT_SAMPLE) if isinstance(r, dict) or (isinstance(r, str) and r.strip())]
    texts = [t for t in model.to_inputs(records) if t.strip()]
    if not texts:
        raise TwinnetError("the parity sample has no non-empty texts")
    reference = model._embed_inputs(texts, batch_size=64)
    report: dict[str, Any] = {"opset": opset, "inputs": ["input_ids", "attention_mask"], "output": "embedding",
                              "normalized": model.normalize, "max_length": model.encoder.max_length,
                              "pooling": model.encoder.pooling, "sample_size": len(texts),
                              "fingerprint": model.fingerprint(),
                              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    with tempfile.TemporaryDirectory(dir=target) as scratch:
        fp32 = Path(scratch) / FP32_FILE
        _export_graph(model, fp32, opset)
        fp32_emb = _run(fp32, model, texts)
        max_diff = float(np.abs(fp32_emb - reference).max())
        report["fp32"] = {"file": FP32_FILE, "max_abs_diff": max_diff, "limit": FP32_MAX_ABS_DIFF,
                          "bytes": fp32.stat().st_size}
        if not max_diff <= FP32_MAX_ABS_DIFF:
            raise TwinnetError(f"ONNX fp32 export differs from PyTorch by {max_diff:.2e} (limit "
                               f"{FP32_MAX_ABS_DIFF:g}); nothing was written")
        outputs = {FP32_FILE: fp32}
        if quantize == "int8":
            int8 = Path(scratch) / INT8_FILE
            report["int8"] = _quantize_int8(fp32, int8, model, texts, reference)
            outputs[INT8_FILE] = int8
        report_file = Path(scratch) / REPORT_FILE
        report_file.write_text(json.dumps(report, indent=2) + "\n")
        outputs[REPORT_FILE] = report_file
        for name, path in outputs.items():  # each file is complete before it replaces the old one
            os.replace(path, target / name)
    return report


def _quantize_int8(fp32: Path, int8: Path, model: SiameseModel, texts: Sequence[str],
                   reference: np.ndarray) -> dict[str, Any]:
    """Dynamic int8 quantisation of the MatMul weights, per output channel.

    Per-channel scales keep the embedding close to fp32 on CPUs without VNNI, where per-tensor int8 loses
    too much (cosine ~0.93 on all-MiniLM-L6-v2). If the parity check still fails, the feed-forward output
    projections -- the layers with the widest activation range -- stay in fp32 and it is tried again.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    matmuls = [n.name for n in onnx.load(str(fp32), load_external_data=False).graph.node if n.op_type == "MatMul"]
    feed_forward_out = [n for n in matmuls if n.endswith("output/dense/MatMul") and "attention" not in n]
    attempts = [[], feed_forward_out] if feed_forward_out else [[]]
    for keep_fp32 in attempts:
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=keep_fp32)
        cosines = cosine_rows(_run(int8, model, texts), reference, normalized=False)
        if cosines.min() >= INT8_MIN_COSINE:
            return {"file": INT8_FILE, "min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean()),
                    "limit": INT8_MIN_COSINE, "bytes": int8.stat().st_size, "scheme": "dynamic, per-channel",
                    "kept_fp32": keep_fp32}
    raise TwinnetError(f"int8 ONNX embeddings reach a cosine of only {cosines.min():.4f} with PyTorch "
                       f"(limit {INT8_MIN_COSINE}); nothing was written")


def _export_graph(model: SiameseModel, path: Path, opset: int) -> None:
    encoder = model.encoder
    example = encoder.collate(encoder.prepare(["an example record", "another, somewhat longer example record"]))
    graph = _EmbeddingGraph(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter traces the model as it runs, which handles Hugging Face attention
        # masks on every transformers version we support; dynamic axes keep batch and length free.
        torch.onnx.export(graph, (example["input_ids"], example["attention_mask"]), str(path), dynamo=False,
                          input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                        "attention_mask": {0: "batch", 1: "tokens"}, "embedding": {0: "batch"}},
                          opset_version=opset, do_constant_folding=True)


def _run(path: Path, model: SiameseModel, texts: Sequence[str]) -> np.ndarray:
    from twinnet.runtime import OnnxSession

    session = OnnxSession(path, threads=None)
    features = model.encoder.collate(model.encoder.prepare(list(texts)))
    return session.run(features["input_ids"].numpy(), features["attention_mask"].numpy())
