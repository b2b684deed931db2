"""`twinnet train` options for the training recipes: graded pairs, entity batches, augmentation, checkpoints."""

import json

import pandas as pd
from typer.testing import CliRunner

from conftest import synthetic_pairs
from test_training_recipes import graded_pairs
from twinnet.cli import app

runner = CliRunner()


def _write(path, pairs, column="label"):
    values = pairs.scores if column == "score" else pairs.labels
    pd.DataFrame({"left": pairs.left, "right": pairs.right, column: values}).to_csv(path, index=False)


def test_graded_training_reports_spearman_and_fits_no_threshold(tmp_path, tiny_base_folder):
    _write(tmp_path / "train.csv", graded_pairs(12), "score")
    _write(tmp_path / "valid.csv", graded_pairs(12, seed=1), "score")
    result = runner.invoke(app, ["train", str(tmp_path / "train.csv"), "--valid", str(tmp_path / "valid.csv"),
                                 "-o", str(tmp_path / "model"), "--model", str(tiny_base_folder), "--loss", "cosent",
                                 "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--max-length", "32"])
    assert result.exit_code == 0, result.output
    assert "graded 0-5" in result.output and "validation Spearman" in result.output
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert not (tmp_path / "model" / "calibration.json").exists()


def test_entity_recipe_with_checkpoints_and_resume(tmp_path, tiny_base_folder):
    _write(tmp_path / "train.csv", synthetic_pairs(16, seed=0))
    _write(tmp_path / "valid.csv", synthetic_pairs(16, seed=1))
    common = [str(tmp_path / "train.csv"), "--valid", str(tmp_path / "valid.csv"), "--model", str(tiny_base_folder),
              "--loss", "supcon", "--sampler", "m_per_class", "--m", "2", "--pair-stage-epochs", "1",
              "--pair-stage-loss", "online_contrastive", "--augment-text", "token_deletion=0.1,span_shuffle=0.2",
              "--accumulation-steps", "2", "--encode-chunk-size", "4", "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--max-length", "32",
              "--checkpoint-dir", str(tmp_path / "ckpt")]
    first = runner.invoke(app, ["train", *common, "-o", str(tmp_path / "model"), "--log-file",
                                str(tmp_path / "log.jsonl")])
    assert first.exit_code == 0, first.output
    settings = json.loads((tmp_path / "model" / "training.json").read_text())["settings"]
    assert settings["sampler"] == "m_per_class" and settings["pair_stage_loss"] == "online_contrastive"
    assert settings["augment"]["span_shuffle"] == 0.2 and settings["accumulation_steps"] == 2
    assert settings["encode_chunk_size"] == 4 and settings["batch_order"] == "shuffle"  # defaults are recorded too
    stages = [json.loads(x).get("stage") for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert stages == [None, "entities", "pairs"]
    resumed = runner.invoke(app, ["train", *common, "-o", str(tmp_path / "resumed"), "--resume-from",
                                  str(tmp_path / "ckpt" / "epoch-1")])
    assert resumed.exit_code == 0, resumed.output
    weights = [(tmp_path / name / "model.safetensors").read_bytes() for name in ("model", "resumed")]
    assert weights[0] == weights[1]


def test_bad_augmentation_is_a_one_line_error(tmp_path, tiny_base_folder):
    _write(tmp_path / "train.csv", synthetic_pairs(8))
    result = runner.invoke(app, ["train", str(tmp_path / "train.csv"), "--valid", str(tmp_path / "train.csv"),
                                 "-o", str(tmp_path / "model"), "--model", str(tiny_base_folder),
                                 "--augment-text", "typo=0.1"])
    assert result.exit_code == 2
    assert "unknown augmentation 'typo'" in result.output and "Traceback" not in result.output


def test_bad_choices_are_refused_before_any_data_is_read(tmp_path):
    # the data path does not exist: the option error must come first, and nothing is written
    for option, value in (("--batch-order", "bogus"), ("--sampler", "nope"), ("--mixed-precision", "fp8")):
        result = runner.invoke(app, ["train", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "model"),
                                     option, value])
        name = option[2:].replace("-", "_")
        assert result.exit_code == 2 and f"{name} must be one of" in result.output and repr(value) in result.output
        assert "Traceback" not in result.output and not (tmp_path / "model").exists()


def test_missing_model_folder_is_named_as_missing(tmp_path):
    result = runner.invoke(app, ["verify", str(tmp_path / "nope"), "a", "b"])
    assert result.exit_code == 2 and "model folder not found" in result.output and "nope" in result.output
