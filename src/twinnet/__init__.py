"""twinnet: Siamese (twin, dual-encoder) networks for matching, verification and similarity search."""

__version__ = "0.1.0"

from twinnet.calibration import Calibrator  # noqa: E402
from twinnet.data import PairDataset, RecordSerializer  # noqa: E402
from twinnet.data import registry as datasets  # noqa: E402
from twinnet.errors import TwinnetError  # noqa: E402
from twinnet.scoring import Decision  # noqa: E402

# PyTorch and the pipelines load on first use, so that the ONNX runtime (twinnet.runtime) works
# where PyTorch is not installed.
_LAZY = {"SiameseModel": "twinnet.model", "Trainer": "twinnet.training", "evaluate": "twinnet.evaluation",
         "EvaluationReport": "twinnet.evaluation", "OnnxSiameseModel": "twinnet.runtime",
         "export_onnx": "twinnet.export", "VectorIndex": "twinnet.index", "deduplicate": "twinnet.dedup",
         "link": "twinnet.dedup", "create_app": "twinnet.serve"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = ["Calibrator", "Decision", "EvaluationReport", "OnnxSiameseModel", "PairDataset", "RecordSerializer",
           "SiameseModel", "Trainer", "TwinnetError", "VectorIndex", "__version__", "create_app", "datasets",
           "deduplicate", "evaluate", "export_onnx", "link"]
