"""The pretrained face encoder (dlib descriptors + a trainable head) on real ORL faces: what it embeds, how it
decides, save/load, bad input, training the head through the shared Trainer, and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import require_shared_data
from twinnet import SiameseModel, Trainer, TwinnetError
from twinnet.cli import app
from twinnet.data.images import read_image_folder

dlib = pytest.importorskip("dlib", reason="the face encoder needs dlib: pip install 'twinnet[faces]'")
face_models = pytest.importorskip("face_recognition_models")

runner = CliRunner()


@pytest.fixture(scope="module")
def orl():
    return require_shared_data("orl_faces")


@pytest.fixture(scope="module")
def faces():
    return SiameseModel.for_faces()


def face(orl, person: int, image: int) -> str:
    return str(orl / f"s{person}" / f"{image}.pgm")


def test_untrained_encoder_returns_dlibs_own_descriptor(faces, orl):
    # the same computation done directly with dlib: detect, 5-point landmarks, descriptor with 0.25 padding
    pixels = np.asarray(Image.open(face(orl, 1, 1)).convert("RGB"))
    detector = dlib.get_frontal_face_detector()
    box = max(detector(pixels, 0), key=lambda r: r.area())
    shape = dlib.shape_predictor(face_models.pose_predictor_five_point_model_location())(pixels, box)
    expected = np.asarray(dlib.face_recognition_model_v1(face_models.face_recognition_model_location())
                          .compute_face_descriptor(pixels, shape, 0, 0.25))
    embedding = faces.embed([face(orl, 1, 1)])[0]
    assert embedding.shape == (128,)
    np.testing.assert_allclose(embedding, expected / np.linalg.norm(expected), atol=1e-5)


def test_same_person_scores_above_every_other_person(faces, orl):
    anchors = [face(orl, p, 1) for p in (1, 2, 3)]
    others = [face(orl, p, 5) for p in (1, 2, 3)]
    sims = faces.embed(anchors) @ faces.embed(others).T
    # diagonal: the same person three photos later; off-diagonal: other people
    for i in range(3):
        assert sims[i, i] > max(np.delete(sims[i], i)) + 0.02


def test_calibrated_verification_and_round_trip(faces, orl, tmp_path):
    people = read_image_folder(orl).select([f"s{i}" for i in range(1, 7)])
    valid = people.select([f"s{i}" for i in range(1, 5)]).verification_pairs(exhaustive=True, seed=0)
    model = SiameseModel.for_faces()
    model.calibrate(valid)
    assert model.calibration_.operating_point_["f1"] > 0.95
    decision = model.verify(face(orl, 5, 1), face(orl, 5, 2))
    assert decision.same and decision.probability > 0.9
    assert not model.verify(face(orl, 5, 1), face(orl, 6, 1)).same

    folder = model.save(tmp_path / "faces")
    config = json.loads((folder / "config.json").read_text())["twinnet"]["encoder"]
    assert config["type"] == "face" and (folder / config["descriptor_model"]).stat().st_size > 1_000_000
    assert (folder / config["landmark_model"]).is_file()
    loaded = SiameseModel.load(folder)
    refs = [face(orl, 5, 3), face(orl, 6, 4)]
    np.testing.assert_array_equal(loaded.embed(refs), model.embed(refs))
    assert loaded.calibration_.threshold_ == model.calibration_.threshold_


def test_saved_folder_loads_without_the_models_package(faces, orl, tmp_path, monkeypatch):
    folder = faces.save(tmp_path / "faces")
    import twinnet.encoders.face as face_module

    def unavailable():
        raise AssertionError("a saved folder must not need the models package")

    monkeypatch.setattr(face_module, "packaged_model_files", unavailable)
    assert SiameseModel.load(folder).embed([face(orl, 2, 2)]).shape == (1, 128)


def test_tight_crop_without_a_detected_face_is_aligned_in_its_own_frame(faces, orl, tmp_path):
    # the central 60% of an ORL face: too tight for the HOG detector, still the person
    crop = Image.open(face(orl, 3, 2))
    w, h = crop.size
    path = tmp_path / "crop.png"
    crop.crop((int(0.2 * w), int(0.2 * h), int(0.8 * w), int(0.8 * h))).save(path)
    grey = tmp_path / "grey.png"
    Image.new("L", (64, 64), 128).save(grey)
    encoder = faces.encoder
    embeddings = faces.embed([str(path), str(grey), face(orl, 3, 2)])
    assert sorted(encoder.undetected_) == sorted([str(path), str(grey)])
    assert np.isfinite(embeddings).all()


def test_bad_inputs_are_one_line_errors_naming_the_file(faces, orl, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(TwinnetError, match="empty.png: image is empty"):
        faces.embed([str(empty)])
    tiny = tmp_path / "tiny.png"
    Image.new("L", (8, 8), 0).save(tiny)
    with pytest.raises(TwinnetError, match=r"tiny.png: image is 8x8 px"):
        faces.embed([str(tiny)])
    with pytest.raises(TwinnetError, match="missing.dat: face model file not found"):
        SiameseModel.for_faces(descriptor_model=tmp_path / "missing.dat", landmark_model=tmp_path / "missing.dat")
    with pytest.raises(TwinnetError, match="give both"):
        SiameseModel.for_faces(descriptor_model=tmp_path / "x.dat")
    not_a_model = tmp_path / "junk.dat"
    not_a_model.write_bytes(b"not a dlib model")
    model = SiameseModel.for_faces(descriptor_model=not_a_model,
                                   landmark_model=face_models.pose_predictor_five_point_model_location())
    with pytest.raises(TwinnetError, match="junk.dat: not a dlib face recognition model"):
        model.embed([face(orl, 1, 1)])


def test_missing_dlib_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)
    model = SiameseModel.for_faces()
    with pytest.raises(TwinnetError, match=r"pip install 'twinnet\[faces\]'"):
        model.embed([np.zeros((32, 32), dtype=np.uint8)])


def test_descriptor_cache_follows_the_file(tmp_path, orl):
    model = SiameseModel.for_faces()
    path = tmp_path / "a.pgm"
    shutil.copyfile(face(orl, 4, 1), path)
    first = model.embed([str(path)])
    assert len(model.encoder._cache) == 1
    shutil.copyfile(face(orl, 7, 1), path)  # another person under the same name
    os.utime(path, ns=(0, 10**18))
    second = model.embed([str(path)])
    assert len(model.encoder._cache) == 2 and float(first[0] @ second[0]) < 0.95


def test_head_trains_through_the_shared_trainer(orl):
    people = read_image_folder(orl).select([f"s{i}" for i in range(1, 7)])
    train = people.select([f"s{i}" for i in range(1, 5)]).training_pairs(per_class=4, negatives=1, seed=0)
    valid = people.select(["s5", "s6"]).verification_pairs(exhaustive=True, seed=0)
    model = SiameseModel.for_faces(64, seed=3)
    before = model.encoder.head.weight.detach().clone()
    assert before.shape == (64, 128)
    torch.testing.assert_close(before @ before.T, torch.eye(64), atol=1e-5, rtol=0)  # orthonormal rows
    Trainer(model, loss="contrastive", epochs=1, batch_size=16, learning_rate=1e-2, seed=0, progress=False,
            warmup_ratio=0.0).fit(train, valid)
    history = model.card_["history"]
    trained = [h for h in history if h.get("pairs")]
    assert len(trained) == 1 and trained[0]["pairs"] == len(train) and np.isfinite(trained[0]["train_loss"])
    # the trainer keeps the better of the untouched head (epoch 0) and the trained one, judged on validation
    selected = model.card_["selected_epoch"]
    assert selected in (0, 1)
    assert torch.equal(model.encoder.head.weight, before) == (selected == 0)
    assert model.calibration_ is not None


def test_cli_calibrates_verifies_and_refuses_onnx(orl, tmp_path):
    data = tmp_path / "people"
    for person in range(1, 9):
        (data / f"s{person}").mkdir(parents=True)
        for image in range(1, 5):
            shutil.copyfile(face(orl, person, image), data / f"s{person}" / f"{image}.pgm")
    out = tmp_path / "model"
    result = runner.invoke(app, ["train", str(data), "-o", str(out), "--encoder", "face", "--epochs", "0",
                                 "--valid-identities", "4", "--test-identities", "2"])
    assert result.exit_code == 0, result.output
    assert "training" not in result.output  # epochs 0: no progress bar, calibration only
    result = runner.invoke(app, ["verify", str(out), face(orl, 9, 1), face(orl, 9, 2)])
    assert result.exit_code == 0 and json.loads(result.output)["same"] is True
    result = runner.invoke(app, ["export", str(out)])
    assert result.exit_code == 2 and "ONNX export supports text models" in result.output
    # the service refuses image models before it asks for API keys or says it is serving
    result = runner.invoke(app, ["serve", str(out)])
    assert result.exit_code == 2 and "answers text models" in result.output
    assert "serving" not in result.output and "API key" not in result.output
    # one image where a collection is expected, and a path that does not exist, are named as such
    result = runner.invoke(app, ["embed", str(out), face(orl, 9, 1), "-o", str(tmp_path / "one.npy")])
    assert result.exit_code == 2 and "is a single image; pass an image folder" in result.output
    result = runner.invoke(app, ["train", str(tmp_path / "nowhere"), "-o", str(tmp_path / "m2"), "--encoder", "face"])
    assert result.exit_code == 2 and "nowhere: no such file or folder" in result.output
