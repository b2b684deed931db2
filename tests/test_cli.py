"""The command line: the whole main job on tiny data, and clean one-line errors."""

import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import synthetic_pairs
from twinnet.cli import app

runner = CliRunner()


def _write_pairs(path, pairs):
    pd.DataFrame({"left": pairs.left, "right": pairs.right, "label": pairs.labels}).to_csv(path, index=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_base_folder):
    root = tmp_path_factory.mktemp("cli")
    _write_pairs(root / "train.csv", synthetic_pairs(24, seed=0))
    _write_pairs(root / "valid.csv", synthetic_pairs(24, seed=1))
    _write_pairs(root / "test.csv", synthetic_pairs(24, seed=2))
    result = runner.invoke(app, ["train", str(root / "train.csv"), "--valid", str(root / "valid.csv"),
                                 "-o", str(root / "model"), "--model", str(tiny_base_folder), "--epochs", "3",
                                 "--batch-size", "8", "--lr", "3e-4", "--max-length", "32"])
    assert result.exit_code == 0, result.output
    return root


def test_train_writes_model_folder(trained):
    assert (trained / "model" / "calibration.json").exists()
    assert json.loads((trained / "model" / "config.json").read_text())["twinnet"]["encoder"]["max_length"] == 32


def test_evaluate_prints_metrics_and_writes_json(trained):
    result = runner.invoke(app, ["evaluate", str(trained / "model"), str(trained / "test.csv"), "--bootstrap", "50",
                                 "-o", str(trained / "report.json")])
    assert result.exit_code == 0, result.output
    assert "f1" in result.output and "roc_auc" in result.output
    report = json.loads((trained / "report.json").read_text())
    threshold = json.loads((trained / "model" / "calibration.json").read_text())["threshold"]
    assert report["metrics"]["threshold"] == threshold  # the stored threshold, unchanged


def test_verify_cli_matches_python(trained):
    from twinnet import SiameseModel

    result = runner.invoke(app, ["verify", str(trained / "model"), "sony camera model a100", "sony camera model A100"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    d = SiameseModel.load(trained / "model").verify("sony camera model a100", "sony camera model A100")
    assert printed["same"] == d.same and printed["score"] == pytest.approx(d.score, abs=1e-6)

    out = trained / "decisions.jsonl"
    result = runner.invoke(app, ["verify", str(trained / "model"), "--pairs", str(trained / "test.csv"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = pd.read_json(out, lines=True)
    assert list(rows.columns) == ["row", "left_id", "right_id", "left", "right", "same", "score",
                                  "probability"] and len(rows) == 48
    assert rows["row"].tolist()[:2] == [2, 3]  # file line numbers
    result = runner.invoke(app, ["verify", str(trained / "model"), "--pairs", str(trained / "test.csv"), "-o", str(out)])
    assert result.exit_code == 2 and "already exists" in result.output


def test_verify_pairs_without_ids_prints_the_texts(trained, tmp_path):
    # ids made from a hash of the text are unreadable, so the decisions carry the texts compared
    pairs = tmp_path / "plain.csv"
    pd.DataFrame({"left": ["sony camera model a100", "lg fridge"],
                  "right": ["sony camera model A100", "apple ipod"]}).to_csv(pairs, index=False)
    result = runner.invoke(app, ["verify", str(trained / "model"), "--pairs", str(pairs)])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(io.StringIO(result.output))
    assert list(rows.columns) == ["row", "left_id", "right_id", "left", "right", "same", "score", "probability"]
    assert rows["left"].tolist() == ["sony camera model a100", "lg fridge"]
    assert rows["right"].tolist() == ["sony camera model A100", "apple ipod"]
    assert rows["left_id"].str.startswith("t:").all()


def test_embed_npy_and_parquet(trained, tmp_path):
    records = tmp_path / "records.csv"
    pd.DataFrame({"id": ["x", "y"], "name": ["sony tv", "lg fridge"], "price": ["1", None]}).to_csv(records, index=False)
    result = runner.invoke(app, ["embed", str(trained / "model"), str(records), "-o", str(tmp_path / "e.npy")])
    assert result.exit_code == 0, result.output
    matrix = np.load(tmp_path / "e.npy")
    assert matrix.shape == (2, 32)
    result = runner.invoke(app, ["embed", str(trained / "model"), str(records), "-o", str(tmp_path / "e.parquet")])
    frame = pd.read_parquet(tmp_path / "e.parquet")
    assert frame["id"].tolist() == ["x", "y"]
    np.testing.assert_allclose(np.stack(frame["embedding"]), matrix, atol=1e-7)


def test_errors_are_one_line_exit_2_no_traceback(trained, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("left,right,label\nsony,sony tv,1\nlg,samsung,7\n")
    cmd = [sys.executable, "-m", "twinnet", "evaluate", str(trained / "model"), str(bad), "--bootstrap", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "bad.csv, row 3, field 'label': label must be 0 or 1" in proc.stderr
    (tmp_path / "nomodel").mkdir()  # a folder, but no model in it
    proc = subprocess.run([sys.executable, "-m", "twinnet", "verify", str(tmp_path / "nomodel"), "a", "b"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "not a twinnet model folder" in proc.stderr and "Traceback" not in proc.stderr


def test_single_class_validation_exit_2(trained, tiny_base_folder, tmp_path):
    valid = synthetic_pairs(8)
    keep = valid.labels == 0
    pd.DataFrame({"left": np.array(valid.left)[keep], "right": np.array(valid.right)[keep], "label": 0}).to_csv(
        tmp_path / "v.csv", index=False)
    result = runner.invoke(app, ["train", str(trained / "train.csv"), "--valid", str(tmp_path / "v.csv"),
                                 "-o", str(tmp_path / "m"), "--model", str(tiny_base_folder), "--epochs", "1"])
    assert result.exit_code != 0
    assert not (tmp_path / "m").exists()


def test_help_has_examples():
    for command in ("train", "evaluate", "verify", "embed"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Example" in result.output


def test_datasets_list_and_unknown(monkeypatch, tmp_path):
    from twinnet.data import registry

    # the location column wraps instead of cutting a long path off: the whole path can be read back from the table
    where = tmp_path / ("deeply-nested-data-folder-" * 4) / "Abt-Buy"
    monkeypatch.setattr(registry, "locate", lambda name: where if name == "abt-buy" else None)
    result = runner.invoke(app, ["datasets", "list"])
    assert result.exit_code == 0 and "abt-buy" in result.output
    last_column = "".join(line.split("│")[-2].strip() for line in result.output.splitlines()
                          if line.count("│") == 5)
    assert str(where) in last_column and "…" not in result.output
    monkeypatch.undo()
    from twinnet.errors import TwinnetError

    monkeypatch.setattr(registry, "data_roots", lambda: [tmp_path])
    with pytest.raises(TwinnetError, match="twinnet datasets fetch abt-buy"):
        registry.path("abt-buy")
    with pytest.raises(TwinnetError, match="unknown dataset"):
        registry.info("nope")


def test_cli_refuses_bad_requests_before_work(trained, tiny_base_folder, tmp_path):
    model = str(trained / "model")
    result = runner.invoke(app, ["verify", model, "a", "b", "--pairs", str(trained / "test.csv")])
    assert result.exit_code == 2 and "not both" in result.output
    result = runner.invoke(app, ["verify", model, "a", "b", "--threshold", "2"])
    assert result.exit_code == 2 and "between -1 and 1" in result.output
    result = runner.invoke(app, ["embed", model, str(trained / "test.csv"), "-o", str(tmp_path / "e.npy")])
    assert result.exit_code == 2 and "looks like a pair file" in result.output
    result = runner.invoke(app, ["evaluate", model, "abt-by"])
    assert result.exit_code == 2 and "known dataset name" in result.output and "abt-buy" in result.output
    # a bad calibration setting is refused before any training happens
    result = runner.invoke(app, ["train", str(trained / "train.csv"), "--valid", str(trained / "valid.csv"),
                                 "-o", str(tmp_path / "m"), "--model", str(tiny_base_folder),
                                 "--calibration", "fmr"])
    assert result.exit_code == 2 and "needs a target" in result.output and "epoch" not in result.output


def test_machine_readable_output_is_not_wrapped(trained, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    result = runner.invoke(app, ["verify", str(trained / "model"), "a long record text " * 3, "another one " * 3])
    assert result.exit_code == 0
    assert len(result.output.strip().splitlines()) == 1 and json.loads(result.output)["threshold"]


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    import os
    import stat

    from twinnet.io import atomic_folder, write_json

    mask = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_folder(tmp_path / "folder") as staging:
            (staging / "f.txt").write_text("x")
            (staging / "sub").mkdir(mode=0o700)
            (staging / "sub" / "w.safetensors").write_bytes(b"")
            os.chmod(staging / "sub" / "w.safetensors", 0o600)  # as safetensors' save_file leaves its files
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "folder" / "sub").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "folder" / "sub" / "w.safetensors").stat().st_mode) == 0o644


def test_evaluate_without_labels_names_the_whole_path(trained, tmp_path):
    unlabelled = tmp_path / "sub" / "nolabel.csv"
    unlabelled.parent.mkdir()
    pd.DataFrame({"left": ["sony tv"], "right": ["sony television"]}).to_csv(unlabelled, index=False)
    result = runner.invoke(app, ["evaluate", str(trained / "model"), str(unlabelled)])
    assert result.exit_code == 2 and f"{unlabelled}: evaluation needs labelled pairs" in result.output
