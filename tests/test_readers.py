"""Readers: DeepMatcher, Ditto and plain pair files, and the errors that name file, row and field."""

import json

import pandas as pd
import pytest

from twinnet.data import (RecordSerializer, parse_label, read_any, read_deepmatcher, read_deepmatcher_splits,
                          read_ditto, read_pairs)
from twinnet.data.records import clean_text, parse_colval
from twinnet.errors import TwinnetError


@pytest.fixture
def dm_folder(tmp_path):
    (tmp_path / "tableA.csv").write_text("id,name,price\n0,sony tv,99\n1,lg fridge,\n2,bose speaker,10\n")
    (tmp_path / "tableB.csv").write_text("id,name,price\n5,sony television,99.0\n6,samsung fridge,5\n")
    (tmp_path / "train.csv").write_text("ltable_id,rtable_id,label\n0,5,1\n1,6,0\n2,6,0\n")
    (tmp_path / "valid.csv").write_text("ltable_id,rtable_id,label\n0,5,1\n1,6,0\n")
    (tmp_path / "test.csv").write_text("ltable_id,rtable_id,label\n2,5,0\n0,5,1\n")
    return tmp_path


def test_deepmatcher_layout(dm_folder):
    train = read_deepmatcher(dm_folder, "train")
    assert len(train) == 3 and train.labels.tolist() == [1, 0, 0]
    assert train.left_ids == ["A:0", "A:1", "A:2"] and train.right_ids == ["B:5", "B:6", "B:6"]
    assert RecordSerializer()(train.left[1]) == "lg fridge"  # missing price skipped
    assert RecordSerializer(style="colval")(train.left[1]) == "COL name VAL lg fridge COL price VAL"
    splits = read_deepmatcher_splits(dm_folder)
    assert [len(s) for s in splits.values()] == [3, 2, 2]
    assert read_any(dm_folder).name == str(dm_folder / "test.csv")  # the file read, so errors name it


def test_deepmatcher_errors(dm_folder):
    (dm_folder / "bad.csv").write_text("ltable_id,rtable_id,label\n0,5,1\n9,5,0\n")
    with pytest.raises(TwinnetError, match=r"bad.csv, row 3, field 'ltable_id': id '9' is not in tableA"):
        read_deepmatcher(dm_folder, "bad")
    (dm_folder / "lab.csv").write_text("ltable_id,rtable_id,label\n0,5,yes please\n")
    with pytest.raises(TwinnetError, match=r"lab.csv, row 2, field 'label': label must be 0 or 1"):
        read_deepmatcher(dm_folder, "lab")
    (dm_folder / "nocol.csv").write_text("left,rtable_id,label\n0,5,1\n")
    with pytest.raises(TwinnetError, match="missing column 'ltable_id'"):
        read_deepmatcher(dm_folder, "nocol")
    with pytest.raises(TwinnetError, match="missing.csv: file not found"):
        read_deepmatcher(dm_folder, "missing")


def test_ditto_layout(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("COL name VAL sony tv COL price VAL 99\tCOL name VAL sony television COL price VAL \t1\n"
                    "COL name VAL lg\tCOL name VAL samsung\t0\n")
    pairs = read_ditto(path)
    assert pairs.labels.tolist() == [1, 0]
    assert pairs.left[0] == {"name": "sony tv", "price": "99"}
    assert RecordSerializer()(pairs.right[0]) == "sony television"
    assert pairs.left_ids[0].startswith("t:")
    assert read_any(path).labels.tolist() == [1, 0]
    bad = tmp_path / "bad.txt"
    bad.write_text("COL a VAL x\tCOL a VAL y\t3\n")
    with pytest.raises(TwinnetError, match=r"bad.txt, row 1, field 'label'"):
        read_ditto(bad)
    notutf8 = tmp_path / "latin.txt"
    notutf8.write_bytes("COL a VAL caf\xe9\tCOL a VAL x\t1\n".encode("latin-1"))
    with pytest.raises(TwinnetError, match="not valid UTF-8"):
        read_ditto(notutf8)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_plain_pair_files(tmp_path, suffix):
    frame = pd.DataFrame({"left": ["sony tv", "lg"], "right": ["sony television", "samsung"], "label": [1, 0]})
    path = tmp_path / f"pairs{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    pairs = read_pairs(path)
    assert pairs.left == ["sony tv", "lg"] and pairs.labels.tolist() == [1, 0]


def test_attribute_columns_and_ids(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("left_id,left_name,left_price,right_id,right_name,right_price,label\n"
                    "a1,sony tv,99,b1,sony television,,1\n")
    pairs = read_pairs(path)
    assert pairs.left[0] == {"name": "sony tv", "price": "99"}
    assert pairs.left_ids == ["a1"] and pairs.right_ids == ["b1"]
    assert RecordSerializer()(pairs.right[0]) == "sony television"


def test_plain_pair_file_errors(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("left,right,label\nsony,sony tv,1\n,lg,0\n")
    with pytest.raises(TwinnetError, match=r"p.csv, row 3, field 'left': text is empty or missing"):
        read_pairs(path)
    path.write_text("a,b\n1,2\n")
    with pytest.raises(TwinnetError, match="needs 'left' and 'right'"):
        read_pairs(path)
    path.write_text("left,right\nx,y\n")
    with pytest.raises(TwinnetError, match="missing column 'label'"):
        read_pairs(path, require_labels=True)
    path.write_bytes(b"left,right,label\ncaf\xe9,x,1\n")
    with pytest.raises(TwinnetError, match="not valid UTF-8"):
        read_pairs(path)
    with pytest.raises(TwinnetError, match="unsupported file type '.xlsx'"):
        (tmp_path / "p.xlsx").write_bytes(b"PK")
        read_pairs(tmp_path / "p.xlsx")


def test_rows_are_numbered_by_line_in_each_format(tmp_path):
    # CSV: line 1 is the header, so the second pair is on line 3; JSONL has no header line; Parquet rows count from 1
    import pandas as pd

    from twinnet.data.readers import iter_records

    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"left_name": "sony", "right_name": "sony tv"}\n{"left_name": "", "right_name": "lg"}\n')
    with pytest.raises(TwinnetError, match=r"p.jsonl, row 2, field 'left': record is empty"):
        read_pairs(jsonl)
    frame = pd.DataFrame({"left": ["sony", None], "right": ["sony tv", "lg"]})
    frame.to_parquet(tmp_path / "p.parquet")
    with pytest.raises(TwinnetError, match=r"p.parquet, row 2, field 'left'"):
        read_pairs(tmp_path / "p.parquet")
    records = tmp_path / "r.jsonl"
    records.write_text('{"id": "a", "text": "sony"}\n{"id": "b", "text": ""}\n')
    with pytest.raises(TwinnetError, match=r"r.jsonl, row 2, field 'text'"):
        list(iter_records(records))
    records.write_text('{"text": "sony"}\n{"text": "lg"}\n')
    assert next(iter(iter_records(records)))[0] == ["0", "1"]  # rows without an id get 0-based row ids
    ditto = tmp_path / "d.txt"
    ditto.write_text("COL name VAL sony\tCOL name VAL sony tv\t1\n\nCOL name VAL \tCOL name VAL lg\t0\n")
    with pytest.raises(TwinnetError, match=r"d.txt, row 3, field 'left'"):
        read_any(ditto)


def test_labels_and_text_cleaning():
    assert [parse_label(v, file="f", row=2) for v in (True, 1, 1.0, "0", " true ")] == [1, 1, 1, 0, 1]
    for bad in (2, "maybe", float("nan"), None):
        with pytest.raises(TwinnetError):
            parse_label(bad, file="f", row=2)
    assert clean_text(float("nan")) == "" and clean_text(None) == ""
    assert clean_text("  caf\u0065\u0301  \n x") == "caf\u00e9 x"  # NFC + collapsed whitespace
    assert "\ud800" not in clean_text("a\ud800b")
    assert parse_colval("COL a VAL 1 COL b VAL two words") == {"a": "1", "b": "two words"}


def test_serializer_options_round_trip():
    s = RecordSerializer(attributes=["description", "name"], max_chars_per_attribute=12)
    assert s({"name": "sony", "description": "a very long description text"}) == "a very long sony"
    assert RecordSerializer.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ValueError, match="style"):
        RecordSerializer(style="xml")


def test_split_codes_writes_product_codes_one_way():
    from twinnet.data.records import split_codes

    assert split_codes("KDL-40V5100") == split_codes("kdl40v5100".upper()) == "KDL 40 V 5100"
    assert split_codes("vgnaw110j/h") == "vgnaw 110 jh"
    # numbers keep their punctuation: decimals, fractions, ranges
    assert split_codes("2.5 ghz 33-1/3 rpm 13.5") == "2.5 ghz 33-1/3 rpm 13.5"
    s = RecordSerializer(attributes=["name"], split_codes=True)
    assert s({"name": "Sony KDL-40V5100"}).lower() == s({"name": "sony kdl40v5100"}) == "sony kdl 40 v 5100"
    assert RecordSerializer.from_dict(s.to_dict()).split_codes is True


def test_not_utf8_error_names_the_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"left,right,label\nsony,tv,1\nlg,fridge,0\ncaf\xe9,x,1\n")
    with pytest.raises(TwinnetError, match=r"latin.csv, row 4: is not valid UTF-8 \(byte 42"):
        read_pairs(path)


def test_one_id_naming_two_records_is_refused_with_both_rows(tmp_path):
    # row numbers of two tables used as ids: "7" is a Sony TV on the left and a Bose speaker on the right
    path = tmp_path / "pairs.csv"
    path.write_text("left_id,left,right_id,right,label\n"
                    "7,sony bravia tv,3,sony bravia 40 tv,1\n"
                    "8,bose soundlink,7,bose soundlink mini,1\n")
    with pytest.raises(TwinnetError) as err:
        read_pairs(path)
    message = str(err.value)
    assert "id '7'" in message and "row 2 left_id" in message and "row 3, field 'right_id'" in message
    # the same id for the same record on both sides (one collection) is what ids are for
    path.write_text("left_id,left,right_id,right,label\n"
                    "a:7,sony bravia tv,b:3,sony bravia 40 tv,1\n"
                    "b:3,sony bravia 40 tv,a:9,bose soundlink mini,0\n")
    pairs = read_pairs(path)
    assert pairs.left_ids == ["a:7", "b:3"] and pairs.right_ids == ["b:3", "a:9"]
