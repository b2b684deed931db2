"""Record augmentation: each edit does what it says, and the same seed gives the same edits."""

import numpy as np
import pytest

from twinnet.data import RecordAugmenter, RecordSerializer
from twinnet.errors import TwinnetError

SERIALIZER = RecordSerializer()
RECORD = {"id": "7", "name": "sony bravia kdl 40 v 5100", "brand": "sony", "price": "999"}


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_off_by_default_and_identity():
    augmenter = RecordAugmenter()
    assert not augmenter.active
    assert augmenter.text(RECORD, SERIALIZER, _rng()) == SERIALIZER(RECORD)


def test_token_deletion_keeps_one_token_at_most_probability():
    text = RecordAugmenter(token_deletion=1.0).text(RECORD, SERIALIZER, _rng())
    assert len(text.split()) == 1 and text in SERIALIZER(RECORD).split()
    partial = RecordAugmenter(token_deletion=0.5).edit_text("a b c d e f g h i j", _rng(3))
    kept = partial.split()
    assert 0 < len(kept) < 10 and kept == [t for t in "a b c d e f g h i j".split() if t in kept]  # order kept


def test_span_shuffle_permutes_one_span_only():
    tokens = "t0 t1 t2 t3 t4 t5 t6 t7".split()
    out = RecordAugmenter(span_shuffle=1.0).edit_text(" ".join(tokens), _rng(1)).split()
    assert sorted(out) == sorted(tokens) and out != tokens
    moved = [i for i, (a, b) in enumerate(zip(out, tokens)) if a != b]
    assert moved[-1] - moved[0] < 4  # one span of 2-4 neighbouring tokens


def test_attribute_drop_keeps_one_attribute_and_the_id():
    dropped = RecordAugmenter(attribute_drop=1.0).drop_attributes(RECORD, _rng())
    filled = [k for k, v in dropped.items() if v and k != "id"]
    assert len(filled) == 1 and dropped["id"] == "7"
    assert RecordAugmenter(attribute_drop=1.0).drop_attributes("plain text", _rng()) == "plain text"


def test_value_swap_exchanges_one_shared_attribute():
    other = {"name": "KDL40V5100 Bravia 40in", "brand": "Sony Corp", "price": "989"}
    a, b = RecordAugmenter(value_swap=1.0).swap_values(RECORD, other, _rng(2))
    changed = [k for k in other if a[k] != RECORD[k]]
    assert len(changed) == 1
    key = changed[0]
    assert a[key] == other[key] and b[key] == RECORD[key]
    assert RecordAugmenter(value_swap=0.0).swap_values(RECORD, other, _rng()) == (RECORD, other)


def test_same_seed_same_edits_other_seed_other_edits():
    augmenter = RecordAugmenter(token_deletion=0.3, span_shuffle=0.5, attribute_drop=0.3)
    runs = [[augmenter.text(RECORD, SERIALIZER, np.random.default_rng(seed)) for _ in range(1)] for seed in (5, 5, 6)]
    assert runs[0] == runs[1]
    outputs = {augmenter.text(RECORD, SERIALIZER, np.random.default_rng(s)) for s in range(20)}
    assert len(outputs) > 5


def test_from_spec_parses_and_rejects():
    augmenter = RecordAugmenter.from_spec("token_deletion=0.1, value_swap=0.3")
    assert augmenter.token_deletion == 0.1 and augmenter.value_swap == 0.3 and augmenter.span_shuffle == 0.0
    assert RecordAugmenter.from_spec({"span_shuffle": 0.2}).span_shuffle == 0.2
    assert RecordAugmenter.from_spec(None) is None
    with pytest.raises(TwinnetError, match="unknown augmentation 'typo'"):
        RecordAugmenter.from_spec("typo=0.1")
    with pytest.raises(TwinnetError, match="between 0 and 1"):
        RecordAugmenter(token_deletion=1.5)
    with pytest.raises(TwinnetError, match="must be a number"):
        RecordAugmenter.from_spec("token_deletion=lots")
