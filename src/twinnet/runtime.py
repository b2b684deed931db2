"""Run an exported model with ONNX Runtime and the Rust tokenizer: no PyTorch needed.

:class:`OnnxSiameseModel` reads a model folder written by :meth:`SiameseModel.save` and exported with
``twinnet export`` (``onnx/model.onnx``, optionally ``onnx/model_int8.onnx``) and offers the same
``embed`` / ``score`` / ``verify`` / ``predict_proba`` as the PyTorch model, with the stored threshold and
probability map. Needs ``onnxruntime``, ``tokenizers`` and numpy/scikit-learn only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twinnet.calibration import Calibrator
from twinnet.data.records import RecordSerializer
from twinnet.errors import TwinnetError
from twinnet.io import read_model_config
from twinnet.scoring import PairScorer, Truncation, length_batches, unique_inputs

ONNX_DIR = "onnx"
FILES = {"fp32": "model.onnx", "int8": "model_int8.onnx"}


class OnnxSession:
    """One ONNX Runtime session with a fixed thread count (``None``: ONNX Runtime's default)."""

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise TwinnetError("the ONNX backend needs onnxruntime: pip install 'twinnet[onnx]'") from None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise TwinnetError(f"cannot load ONNX model: {str(exc).splitlines()[0]}", file=path) from None
        self.input_names = {i.name for i in self.session.get_inputs()}

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        return self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})[0]


class FastTokenizer:
    """The model folder's ``tokenizer.json`` through the ``tokenizers`` library, counting truncation."""

    def __init__(self, folder: Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        path = folder / "tokenizer.json"
        if not path.exists():
            raise TwinnetError("no tokenizer.json in the model folder (the ONNX runtime needs a fast tokenizer)",
                               file=folder)
        self.full = Tokenizer.from_file(str(path))
        self.full.no_truncation()
        self.full.no_padding()
        self.clipped = Tokenizer.from_file(str(path))
        self.clipped.no_padding()
        self.clipped.enable_truncation(max_length)
        self.max_length = max_length
        self.pad_id = self._pad_id(folder)

    def _pad_id(self, folder: Path) -> int:
        config = folder / "tokenizer_config.json"
        pad = json.loads(config.read_text()).get("pad_token") if config.exists() else None
        if isinstance(pad, dict):
            pad = pad.get("content")
        found = self.full.token_to_id(pad) if isinstance(pad, str) else None
        return int(found) if found is not None else 0

    def __call__(self, texts: Sequence[str]) -> tuple[list[list[int]], list[int]]:
        """Token ids (truncated to ``max_length``) and how many tokens were cut from each text."""
        full = [e.ids for e in self.full.encode_batch(list(texts), add_special_tokens=True)]
        long_rows = [i for i, ids in enumerate(full) if len(ids) > self.max_length]
        cut = [0] * len(full)
        if long_rows:
            clipped = self.clipped.encode_batch([texts[i] for i in long_rows], add_special_tokens=True)
            for i, enc in zip(long_rows, clipped):
                cut[i] = len(full[i]) - len(enc.ids)
                full[i] = enc.ids
        return full, cut


class OnnxSiameseModel(PairScorer):
    """A saved text model run by ONNX Runtime: same embeddings (to 1e-4 in fp32), same decisions.

    Parameters
    ----------
    session: the ONNX graph (token ids -> final embedding).
    tokenizer: the model's tokenizer.
    config: the ``twinnet`` section of the model's ``config.json``.
    calibration: the fitted threshold and probability map, if any.
    """

    input_modality = "text"

    def __init__(self, session: OnnxSession, tokenizer: FastTokenizer, config: dict[str, Any], *,
                 calibration: Calibrator | None = None, precision: str = "fp32") -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.config_ = config
        self.normalize = bool(config.get("normalize", True))
        self.serializer = RecordSerializer.from_dict(config.get("serialization", {}))
        self.calibration_ = calibration
        self.precision = precision
        self.card_: dict[str, Any] = {}
        self.last_truncation = Truncation()
        self.last_tokens_cut = np.zeros(0, dtype=np.int64)
        self.export_report: dict[str, Any] = {}

    def fingerprint(self) -> str:
        """The fingerprint of the PyTorch model this graph was exported from (see ``SiameseModel.fingerprint``)."""
        if "fingerprint" not in self.export_report:
            raise TwinnetError("this export records no model fingerprint; re-run `twinnet export`")
        return self.export_report["fingerprint"]

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, quantized: bool = False,
             threads: int | None = None) -> OnnxSiameseModel:
        """Load ``path`` (a model folder exported with ``twinnet export``); ``quantized`` picks the int8 graph."""
        folder = Path(path)
        config = read_model_config(folder)
        config_file = folder / "config.json"
        if config["encoder"].get("type") != "text":
            raise TwinnetError("the ONNX runtime runs text models only", file=config_file)
        precision = "int8" if quantized else "fp32"
        graph = folder / ONNX_DIR / FILES[precision]
        if not graph.exists():
            flag = " --quantize int8" if quantized else ""
            raise TwinnetError(f"no exported {precision} graph; run `twinnet export {folder}{flag}` first",
                               file=graph)
        calibration = Calibrator.read(folder)
        model = cls(OnnxSession(graph, threads=threads), FastTokenizer(folder, config["encoder"]["max_length"]),
                    config, calibration=calibration, precision=precision)
        if (folder / "training.json").exists():
            model.card_ = json.loads((folder / "training.json").read_text())
        if (folder / ONNX_DIR / "export.json").exists():
            model.export_report = json.loads((folder / ONNX_DIR / "export.json").read_text())
        return model

    @property
    def embedding_dim(self) -> int:
        shape = self.session.session.get_outputs()[0].shape
        return int(shape[-1]) if isinstance(shape[-1], int) else -1

    def _embed_inputs(self, inputs: list[Any], *, batch_size: int, normalize: bool | None = None,
                      progress: Any = None) -> np.ndarray:
        if normalize is False and self.normalize:
            raise TwinnetError("the ONNX graph returns normalised embeddings; normalize=False needs the "
                               "PyTorch model")
        if not inputs:
            return np.zeros((0, max(self.embedding_dim, 0)), dtype=np.float32)
        for i, text in enumerate(inputs):
            if not isinstance(text, str):
                raise TwinnetError(f"item {i} is {type(text).__name__}, expected text")
        unique, inverse = unique_inputs(inputs)
        ids, cut = self.tokenizer(unique)
        self._record_truncation(cut, inverse)
        out: np.ndarray | None = None
        for rows in length_batches([len(x) for x in ids], batch_size):
            width = max(len(ids[i]) for i in rows)
            input_ids = np.full((len(rows), width), self.tokenizer.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                input_ids[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = 1
            emb = self.session.run(input_ids, mask)
            if out is None:
                out = np.empty((len(unique), emb.shape[1]), dtype=np.float32)
            out[rows] = emb
            if progress is not None:
                progress(len(rows))
        assert out is not None
        return out[inverse]
