"""Synthetic product collections with known duplicates, for scaling runs and tests.

Each entity is a product (brand, kind, model code, capacity, colour, price); some entities get duplicate
listings written the way shops differ: typos, abbreviations, reordered tokens, missing attributes, unit
spellings (``500 GB`` / ``500gb`` / ``0.5 TB``) and prices a few percent apart. Seeded: the same arguments
give the same table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twinnet.errors import TwinnetError

BRANDS = ["sony", "samsung", "lg", "panasonic", "philips", "canon", "nikon", "apple", "dell", "hp", "lenovo",
          "asus", "acer", "logitech", "bose", "jbl", "toshiba", "sandisk", "seagate", "garmin", "kingston",
          "netgear", "epson", "brother", "sharp", "pioneer", "yamaha", "denon", "olympus", "fujifilm"]
KINDS = ["lcd tv", "laptop", "digital camera", "headphones", "external hard drive", "usb flash drive",
         "wireless router", "inkjet printer", "bluetooth speaker", "gps navigator", "monitor", "tablet",
         "soundbar", "memory card", "keyboard", "mouse", "blu-ray player", "camcorder", "projector", "receiver"]
COLOURS = ["black", "white", "silver", "red", "blue", "grey", ""]
ABBREVIATIONS = {"digital": "dig.", "camera": "cam", "external": "ext.", "wireless": "wrls", "bluetooth": "bt",
                 "headphones": "headphone", "television": "tv", "printer": "prntr", "monitor": "mon.",
                 "black": "blk", "silver": "slv", "white": "wht", "player": "plyr", "drive": "drv"}
CAPACITIES = [("gb", [16, 32, 64, 128, 256, 500]), ("tb", [1, 2, 4]), ("in", [22, 32, 40, 46, 55])]


def synthesize_products(n_records: int, *, duplicate_fraction: float = 0.3, max_duplicates: int = 3,
                        seed: int = 0) -> pd.DataFrame:
    """A table of ``n_records`` listings: ``id``, ``name``, ``brand``, ``price``, ``description`` and the ground
    truth ``entity_id``. About ``duplicate_fraction`` of the records are extra listings of another record's
    entity (1 to ``max_duplicates`` per duplicated entity)."""
    if n_records < 0:
        raise TwinnetError(f"n_records must be >= 0, got {n_records}")
    if not 0 <= duplicate_fraction < 1:
        raise TwinnetError(f"duplicate_fraction must be in [0, 1), got {duplicate_fraction}")
    rng = np.random.default_rng(seed)
    n_duplicates = int(round(n_records * duplicate_fraction))
    n_entities = n_records - n_duplicates
    entities = [_entity(rng, e) for e in range(n_entities)]
    rows = [_listing(e, rng, corrupt=False) for e in entities]
    while len(rows) < n_records and entities:
        entity = entities[int(rng.integers(0, n_entities))]
        for _ in range(int(rng.integers(1, max_duplicates + 1))):
            if len(rows) >= n_records:
                break
            rows.append(_listing(entity, rng, corrupt=True))
    order = rng.permutation(len(rows))
    table = pd.DataFrame([rows[i] for i in order])
    if table.empty:
        table = pd.DataFrame(columns=["name", "brand", "price", "description", "entity_id"])
    table.insert(0, "id", [f"r{i}" for i in range(len(table))])
    return table


def _entity(rng: np.random.Generator, number: int) -> dict:
    unit, values = CAPACITIES[int(rng.integers(0, len(CAPACITIES)))]
    letters = "".join(rng.choice(list("abcdefghjklmnpqrstuvwxyz"), size=int(rng.integers(2, 4))))
    code = f"{letters}{int(rng.integers(10, 9999))}{rng.choice(['', 'b', 'x', 'k'])}"
    return {"entity_id": f"e{number}", "brand": str(rng.choice(BRANDS)), "kind": str(rng.choice(KINDS)),
            "code": code, "capacity": int(rng.choice(values)), "unit": unit, "colour": str(rng.choice(COLOURS)),
            "price": float(np.round(rng.lognormal(4.5, 1.0), 2))}


def _listing(entity: dict, rng: np.random.Generator, *, corrupt: bool) -> dict:
    code, capacity, unit, price = entity["code"], entity["capacity"], entity["unit"], entity["price"]
    capacity_text = f"{capacity} {unit}"
    brand = entity["brand"]
    if corrupt:
        if rng.random() < 0.4:
            code = code.upper() if rng.random() < 0.5 else f"{code[:2]}-{code[2:]}"
        if rng.random() < 0.4:  # the same size, written another way
            capacity_text = (f"{capacity}{unit}" if rng.random() < 0.5 else
                             f"{capacity / 1000:g} tb" if unit == "gb" and capacity >= 500 else
                             f"{capacity}-{'inch' if unit == 'in' else unit}")
        if rng.random() < 0.5:
            price = float(np.round(price * rng.uniform(0.93, 1.07), 2))
    tokens = [brand, entity["kind"], code, capacity_text, entity["colour"]]
    tokens = [t for t in tokens if t]
    if corrupt:
        if rng.random() < 0.4:  # reordered tokens
            tokens = [tokens[i] for i in rng.permutation(len(tokens))]
        words = " ".join(tokens).split()
        words = [ABBREVIATIONS.get(w, w) if rng.random() < 0.3 else w for w in words]
        words = [_typo(w, rng) if len(w) > 3 and rng.random() < 0.12 else w for w in words]
        if len(words) > 3 and rng.random() < 0.3:  # a token dropped
            del words[int(rng.integers(0, len(words)))]
        name = " ".join(words)
    else:
        name = " ".join(tokens)
    description = f"{entity['kind']} by {brand}, model {entity['code']}, {capacity_text}"
    record = {"name": name, "brand": brand, "price": f"{price:.2f}", "description": description,
              "entity_id": entity["entity_id"]}
    if corrupt:  # missing attributes
        for attribute in ("brand", "price", "description"):
            if rng.random() < 0.15:
                record[attribute] = ""
    return record


def _typo(word: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(0, len(word) - 1))
    kind = rng.integers(0, 3)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]  # swap two letters
    if kind == 1:
        return word[:i] + word[i + 1:]                            # drop one
    return word[:i] + str(rng.choice(list("aeiourstn"))) + word[i + 1:]  # replace one
