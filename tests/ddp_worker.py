"""One rank of the data-parallel test (tests/test_distributed.py runs it under torchrun, 2 CPU processes, gloo).

Writes ``rank<N>.json``: the batches this rank trained on, a digest of its parameters before and after training,
and whether it saved the model (only rank 0 should)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import _tokenizer, make_tiny_encoder, synthetic_pairs  # noqa: E402
from twinnet import SiameseModel, Trainer  # noqa: E402


def digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    model = SiameseModel(make_tiny_encoder(_tokenizer(), seed=0))
    before = digest(model)
    batches: list[list[list[int]]] = []
    collate = model.encoder.collate

    def record_training_batches(prepared):
        if model.training:  # evaluation passes also collate; only training batches count
            batches.append([list(p.ids) for p in prepared])
        return collate(prepared)

    model.encoder.collate = record_training_batches
    trainer = Trainer(model, epochs=1, batch_size=8, learning_rate=1e-3, seed=0, progress=False,
                      log_file=out / "log.jsonl", checkpoint_dir=out / "checkpoints")
    trainer.fit(synthetic_pairs(24, seed=0), synthetic_pairs(24, seed=1))
    saved = trainer.rank_ == 0
    if saved:
        model.save(out / "model")
    (out / f"rank{trainer.rank_}.json").write_text(json.dumps({
        "rank": trainer.rank_, "world": trainer.world_size_, "batches": batches, "before": before,
        "after": digest(model), "saved": saved}))


if __name__ == "__main__":
    main()
