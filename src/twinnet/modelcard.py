"""The generated README.md of a model folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twinnet.model import SiameseModel


def render_model_card(model: SiameseModel) -> str:
    card = model.card_ or {}
    enc = model.encoder.config()
    lines = ["# twinnet Siamese model", "",
             "One shared encoder embeds both records; the cosine similarity of the L2-normalised embeddings is "
             "the score; a pair is **same** when `score >= threshold`.", "",
             "## Encoder", ""]
    lines += [f"- {k}: `{v}`" for k, v in enc.items()]
    lines += [f"- normalisation: `{model.normalize}`", f"- similarity: `{model.similarity}`",
              f"- serialisation: `{model.serializer.to_dict()}`", ""]
    if card.get("train"):
        lines += ["## Training data", ""]
        for split in ("train", "valid"):
            if card.get(split):
                info = {k: v for k, v in card[split].items()}
                lines.append(f"- {split}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
        lines += ["", "## Settings", ""]
        lines += [f"- {k}: `{v}`" for k, v in card.get("settings", {}).items()]
        lines += [f"- selected epoch (best validation F1): {card.get('selected_epoch')}",
                  f"- training time: {card.get('train_seconds', 0):.0f} s on {card.get('device', '?')}", ""]
    if model.calibration_ is not None:
        op = model.calibration_.operating_point_
        lines += ["## Decision threshold (fitted on validation)", "",
                  f"- strategy: `{model.calibration_.strategy}`, probability map: `{model.calibration_.probability}`",
                  f"- threshold: **{model.calibration_.threshold_:.4f}**",
                  "- validation operating point: " + ", ".join(
                      f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in op.items()), ""]
    for name, result in (card.get("evaluations") or {}).items():
        lines += [f"## Evaluation on `{name}` (threshold from validation, applied unchanged)", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in result.items() if isinstance(v, float)]
        lines.append("")
    for name, rows in (card.get("hardest_errors") or {}).items():
        if not rows:
            continue
        lines += [f"## Hardest errors on `{name}`", "", "| kind | score | left | right |", "|---|---|---|---|"]
        for row in rows:
            if row.get("montage"):
                lines.append(f"| {row['kind']} | {row['score']:.4f} | ![pair]({row['montage']}) "
                             f"`{_short(row['left'])}` | `{_short(row['right'])}` |")
            else:
                lines.append(f"| {row['kind']} | {row['score']:.4f} | {_cell(row['left'])} | {_cell(row['right'])} |")
        lines.append("")
    lines += ["## Use", "", "```python", "from twinnet import SiameseModel",
              "model = SiameseModel.load('path/to/this/folder')",
              "model.verify(record_a, record_b)  # Decision(same=..., score=..., probability=...)", "```", ""]
    return "\n".join(lines)


def _short(text: str, keep: int = 48) -> str:
    return text if len(text) <= keep else "…" + text[-keep:]


def _cell(text: str) -> str:
    return _short(str(text), 80).replace("|", "\\|").replace("\n", " ")


def _write_error_montages(model: SiameseModel, folder: Path) -> None:
    """For hardest-error pairs of images, write a side-by-side PNG into ``examples/`` and link it from the card."""
    from twinnet.data.images import is_image_ref, pair_montage_png
    from twinnet.errors import TwinnetError

    for name, rows in (model.card_.get("hardest_errors") or {}).items():
        slug = "".join(c if c.isalnum() else "_" for c in name)[:40]
        for k, row in enumerate(rows):
            if not (is_image_ref(row.get("left")) and is_image_ref(row.get("right"))):
                continue
            relative = f"examples/{slug}_{k + 1}.png"
            try:
                data = pair_montage_png(row["left"], row["right"])
            except TwinnetError:  # the images moved since evaluation: the card keeps their paths only
                row.pop("montage", None)
                continue
            (folder / "examples").mkdir(exist_ok=True)
            (folder / relative).write_bytes(data)
            row["montage"] = relative


def write_card_files(model: SiameseModel, folder: Path) -> None:
    """(Re)write ``training.json`` and the ``README.md`` model card of a model folder, atomically."""
    from twinnet.io import atomic_path

    _write_error_montages(model, folder)
    with atomic_path(folder / "training.json") as tmp:
        tmp.write_text(json.dumps(model.card_, indent=2, default=str) + "\n")
    card = render_model_card(model)
    with atomic_path(folder / "README.md") as tmp:
        tmp.write_text(card, encoding="utf-8")
