"""twinnet: Siamese (twin, dual-encoder) networks for matching, verification and similarity search."""

__version__ = "0.1.0"

from twinnet.calibration import Calibrator  # noqa: E402
from twinnet.data import PairDataset, RecordSerializer  # noqa: E402
from twinnet.data import registry as datasets  # noqa: E402
from twinnet.errors import TwinnetError  # noqa: E402
from twinnet.model import Decision, SiameseModel  # noqa: E402


def __getattr__(name: str):
    # The pipelines pull in more (scikit-learn text features, Rich); import them on first use.
    if name == "Trainer":
        from twinnet.training import Trainer

        return Trainer
    if name in ("evaluate", "EvaluationReport"):
        from twinnet import evaluation

        return getattr(evaluation, name)
    raise AttributeError(name)


__all__ = ["Calibrator", "Decision", "EvaluationReport", "PairDataset", "RecordSerializer", "SiameseModel",
           "Trainer", "TwinnetError", "__version__", "datasets", "evaluate"]
