"""Graded pair data: the STS Benchmark layout, `score` columns, and the registry name `stsb`."""

import numpy as np
import pytest

from conftest import require_shared_data
from twinnet.data import PairDataset, read_any, read_pairs, read_sts
from twinnet.errors import TwinnetError


def test_read_sts_layout_with_quotes_and_extra_columns(tmp_path):
    path = tmp_path / "sts-train.csv"
    path.write_text('main-captions\tMSRvid\t2012test\t0001\t5.000\tA plane is taking off.\tAn air plane is taking off.\n'
                    'main-news\theadlines\t2013\t0002\t0.4\tHe said "no".\tShe left.\tsource\tlicence\n',
                    encoding="utf-8")
    pairs = read_any(path)
    assert pairs.is_graded and not pairs.has_labels
    assert pairs.scores.tolist() == [5.0, 0.4]
    assert pairs.left[1] == 'He said "no".' and pairs.right[1] == "She left."
    assert pairs.subset([1]).scores.tolist() == [0.4]


@pytest.mark.parametrize(("line", "message", "field"), [
    ("g\tf\ty\t1\tfive\ta\tb", "score must be a finite number", "score (column 5)"),
    ("g\tf\ty\t1\tnan\ta\tb", "score must be a finite number", "score (column 5)"),
    ("g\tf\ty\t1\t3.0\t \tb", "sentence is empty", "sentence1 (column 6)"),
    ("g\tf\ty\t1\t3.0\ta", "at least 7 tab-separated fields", None),
])
def test_read_sts_errors_name_row_and_field(tmp_path, line, message, field):
    path = tmp_path / "sts-dev.csv"
    path.write_text("g\tf\ty\t0\t1.0\tok\tfine\n" + line + "\n", encoding="utf-8")
    with pytest.raises(TwinnetError, match=message) as info:
        read_sts(path)
    assert info.value.row == 2 and info.value.field == field


def test_score_column_in_pair_files(tmp_path):
    path = tmp_path / "graded.csv"
    path.write_text("left,right,score\na cat,a kitten,4.5\na cat,a car,0\n", encoding="utf-8")
    pairs = read_pairs(path)
    assert pairs.scores.tolist() == [4.5, 0.0] and pairs.labels is None
    path.write_text("left,right,score\na cat,a kitten,high\n", encoding="utf-8")
    with pytest.raises(TwinnetError, match="score must be a finite number") as info:
        read_pairs(path)
    assert info.value.row == 2 and info.value.field == "score"
    both = tmp_path / "both.csv"
    both.write_text("left,right,score,label\na,b,1,1\n", encoding="utf-8")
    with pytest.raises(TwinnetError, match="both 'label'"):
        read_pairs(both)


def test_labels_and_scores_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        PairDataset(["a"], ["b"], labels=np.array([1]), scores=np.array([3.0]))
    with pytest.raises(ValueError, match="NaN"):
        PairDataset(["a"], ["b"], scores=np.array([float("nan")]))


def test_stsb_by_name():
    require_shared_data("stsbenchmark", "sts-train.csv")
    from twinnet import datasets

    train, valid, test = datasets.load_pairs("stsb")
    assert (len(train), len(valid), len(test)) == (5749, 1500, 1379)
    for split in (train, valid, test):
        assert split.scores.min() == 0.0 and split.scores.max() == 5.0
