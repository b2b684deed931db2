"""Audit: a fixture with exactly one planted fault of each kind is reported with nothing else."""

import json

from typer.testing import CliRunner

from twinnet.cli import app
from twinnet.data import read_deepmatcher_splits
from twinnet.data.audit import audit


def _planted(folder):
    """One fault of each kind:
    leaked pair     (A1, B1) is in train and again in test;
    label conflict  (A3, B3) is same in train but different in valid;
    transitivity    A4~B6, A6~B6 (train) and A6~B7 (test) are same, yet (A4, B7) is labelled different;
    empty record    tableA id 5 has no text."""
    (folder / "tableA.csv").write_text("id,name\n1,sony tv kdl40\n2,lg fridge gr300\n3,bose speaker 301\n"
                                       "4,nikon d90 camera\n5,\n6,nikon d90 body\n")
    (folder / "tableB.csv").write_text("id,name\n1,sony kdl-40 television\n2,samsung fridge rs50\n"
                                       "3,bose 301 speakers\n4,canon g7 powershot\n5,panasonic tv\n6,nikon d90\n"
                                       "7,nikon d-90 slr\n")
    (folder / "train.csv").write_text("ltable_id,rtable_id,label\n1,1,1\n2,2,0\n3,3,1\n6,6,1\n4,6,1\n")
    (folder / "valid.csv").write_text("ltable_id,rtable_id,label\n3,3,0\n2,4,0\n5,5,0\n")
    (folder / "test.csv").write_text("ltable_id,rtable_id,label\n1,1,1\n2,5,0\n4,7,0\n6,7,1\n")
    return folder


def test_planted_faults_found_and_nothing_else(tmp_path):
    folder = _planted(tmp_path)
    splits = read_deepmatcher_splits(folder, allow_empty_records=True)
    report = audit(splits)
    counts = report.counts()
    assert counts == {"duplicate_pairs": 0, "label_conflicts": 1, "transitivity_conflicts": 1, "leaked_pairs": 1,
                      "empty_records": 1, "near_identical_different": 0}
    assert report.leaked_pairs[0]["pair"] == ["A:1", "B:1"]
    assert report.label_conflicts[0]["pair"] == ["A:3", "B:3"]
    assert report.transitivity_conflicts[0]["pair"] == ["A:4", "B:7"]
    assert report.empty_records[0]["id"] == "A:5"
    assert report.splits["train"]["same"] == 4 and report.splits["test"]["pairs"] == 4

    runner = CliRunner()
    result = runner.invoke(app, ["audit", str(folder), "--strict", "-o", str(tmp_path / "audit.json")])
    assert result.exit_code == 1, result.output
    assert json.loads((tmp_path / "audit.json").read_text())["counts"]["leaked_pairs"] == 1


def test_clean_data_passes_strict(tmp_path):
    (tmp_path / "train.csv").write_text("left,right,label\nsony tv,sony television,1\nlg fridge,samsung fridge,0\n")
    (tmp_path / "test.csv").write_text("left,right,label\nbose 301,bose 301 speakers,1\nsony tv,tv sony,1\n")
    result = CliRunner().invoke(app, ["audit", str(tmp_path / "train.csv"), "--split", f"test={tmp_path / 'test.csv'}",
                                      "--strict"])
    assert result.exit_code == 0, result.output
    assert "leaked pairs: 0" in result.output and "1 of 4 records also in train" in result.output
