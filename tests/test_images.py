"""Images: loading and bad input, folder/zip/list readers, identity splits, the CNN encoders, augmentation,
save/load, the binary head, training through the shared Trainer, one-shot evaluation and the CLI."""

from __future__ import annotations

import gzip
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from conftest import require_shared_data
from twinnet import SiameseModel, Trainer, TwinnetError, evaluate
from twinnet.cli import app
from twinnet.data.images import (ImageCollection, load_image, merge_collections, read_idx_collection,
                                 read_image_folder, read_image_pairs, triplets_to_pairs)
from twinnet.encoders import Augmentation, ImageEncoder
from twinnet.losses import build_loss
from twinnet.oneshot import (OneShotTask, PixelEmbedder, one_shot_accuracy, read_omniglot_runs, sample_tasks)
from twinnet.training import entity_labels

runner = CliRunner()
torch.set_num_threads(1)


def glyph(kind: int, variant: int, size: int = 24) -> Image.Image:
    """A white-on-black drawing of shape ``kind`` (bar angle/position differ per kind), jittered by ``variant``."""
    rng = np.random.default_rng(1000 * kind + variant)
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    dx, dy = (int(v) for v in rng.integers(-1, 2, size=2))
    shapes = [lambda: draw.line((4 + dx, 4 + dy, 19 + dx, 19 + dy), fill=255, width=3),
              lambda: draw.line((4 + dx, 19 + dy, 19 + dx, 4 + dy), fill=255, width=3),
              lambda: draw.rectangle((6 + dx, 6 + dy, 17 + dx, 17 + dy), outline=255, width=2),
              lambda: draw.ellipse((5 + dx, 5 + dy, 18 + dx, 18 + dy), fill=255),
              lambda: draw.line((12 + dx, 3, 12 + dx, 20), fill=255, width=3),
              lambda: draw.line((3, 12 + dy, 20, 12 + dy), fill=255, width=3),
              lambda: draw.polygon((12 + dx, 3, 20, 20 + dy, 3, 20 + dy), outline=255, width=2),
              lambda: draw.ellipse((9 + dx, 9 + dy, 14 + dx, 14 + dy), fill=255)]
    shapes[kind % len(shapes)]()
    return image


@pytest.fixture(scope="module")
def glyph_folder(tmp_path_factory):
    """root/<identity>/<image>: 8 identities x 5 images, mixed formats (PNG, JPEG, PGM) and sizes."""
    root = tmp_path_factory.mktemp("glyphs")
    for kind in range(8):
        folder = root / f"shape{kind}"
        folder.mkdir()
        for variant in range(5):
            image = glyph(kind, variant, size=24 if variant % 2 == 0 else 30)
            suffix = (".png", ".pgm", ".jpg")[variant % 3]
            image.save(folder / f"{variant}{suffix}")
    (root / "README.txt").write_text("not an image; ignored")
    return root


# ---------------------------------------------------------------------------------------------- loading
def test_load_image_formats_modes_and_resize(tmp_path):
    Image.new("RGB", (10, 6), (255, 0, 0)).save(tmp_path / "red.png")
    grey = load_image(str(tmp_path / "red.png"), (4, 8), channels=1)
    assert grey.shape == (1, 4, 8) and grey.dtype == np.uint8
    assert np.all(grey == 76)  # ITU-R 601 luma of pure red: 0.299 * 255
    colour = load_image(str(tmp_path / "red.png"), (4, 8), channels=3)
    assert colour.shape == (3, 4, 8) and colour[:, 0, 0].tolist() == [255, 0, 0]
    # a hand-written binary PGM (P5): 2x2 pixels 0, 50, 100, 150
    (tmp_path / "tiny.pgm").write_bytes(b"P5\n2 2\n255\n" + bytes([0, 50, 100, 150]))
    assert load_image(str(tmp_path / "tiny.pgm"), (2, 2)).reshape(-1).tolist() == [0, 50, 100, 150]
    # crop keeps the centre: a 6x2 image whose centre 2x2 is white becomes all white at 2x2
    strip = np.zeros((2, 6), dtype=np.uint8)
    strip[:, 2:4] = 255
    assert load_image(strip, (2, 2), resize="crop").min() == 255
    assert load_image(strip, (2, 2), resize="stretch").min() < 255


@pytest.mark.parametrize("content, message", [
    (b"", "0 bytes"),
    (b"this is not an image at all", "not a readable image"),
])
def test_bad_image_bytes_name_the_file(tmp_path, content, message):
    path = tmp_path / "face.png"
    path.write_bytes(content)
    with pytest.raises(TwinnetError, match=message) as info:
        load_image(str(path), (8, 8))
    assert "face.png" in str(info.value)


def test_truncated_image_and_unsupported_format_name_the_file(tmp_path):
    glyph(0, 0).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(TwinnetError, match="cut.png.*(truncated|corrupt)"):
        load_image(str(tmp_path / "cut.png"), (8, 8))
    glyph(0, 0).save(tmp_path / "anim.gif")
    with pytest.raises(TwinnetError, match="anim.gif.*unsupported image format"):
        load_image(str(tmp_path / "anim.gif"), (8, 8))
    # a GIF renamed .png is refused by its content
    (tmp_path / "liar.png").write_bytes((tmp_path / "anim.gif").read_bytes())
    with pytest.raises(TwinnetError, match="liar.png.*unsupported image format GIF"):
        load_image(str(tmp_path / "liar.png"), (8, 8))
    with pytest.raises(TwinnetError, match="missing.png.*not found"):
        load_image(str(tmp_path / "missing.png"), (8, 8))


# ---------------------------------------------------------------------------------------------- collections
def test_folder_and_zip_read_the_same_identities(glyph_folder, tmp_path):
    folder = read_image_folder(glyph_folder)
    assert len(folder) == 40 and folder.identity_names == [f"shape{k}" for k in range(8)]
    archive = tmp_path / "glyphs.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted(glyph_folder.rglob("*")):
            if path.is_file():
                out.write(path, f"top/{path.relative_to(glyph_folder).as_posix()}")
    zipped = read_image_folder(archive)  # the single top folder is the root
    assert zipped.identity_names == folder.identity_names and len(zipped) == 40
    assert zipped.images[0].startswith(f"{archive}::top/shape0/")
    assert load_image(zipped.images[0], (24, 24)).tolist() == load_image(folder.images[0], (24, 24)).tolist()
    merged = merge_collections(folder.select(["shape0"]), zipped.select(["shape0", "shape1"]))
    assert len(merged) == 10  # shape0's five images are the same files in both


def test_folder_errors(tmp_path):
    (tmp_path / "loose" / "person").mkdir(parents=True)
    glyph(0, 0).save(tmp_path / "loose" / "person" / "a.png")
    glyph(0, 1).save(tmp_path / "loose" / "root_image.png")
    with pytest.raises(TwinnetError, match="root_image.png.*directly in the root"):
        read_image_folder(tmp_path / "loose")
    (tmp_path / "gif" / "p1").mkdir(parents=True)
    glyph(0, 0).save(tmp_path / "gif" / "p1" / "x.gif")
    with pytest.raises(TwinnetError, match="x.gif.*unsupported image format"):
        read_image_folder(tmp_path / "gif")
    for person in ("p1", "p2", "p3"):
        (tmp_path / "single" / person).mkdir(parents=True)
        glyph(1, 0).save(tmp_path / "single" / person / "only.png")
    singles = read_image_folder(tmp_path / "single")
    with pytest.raises(TwinnetError, match="single image, so no 'same' pair is possible"):
        singles.training_pairs()
    with pytest.raises(TwinnetError, match="not found"):
        read_image_folder(tmp_path / "nowhere")


def test_identity_split_is_disjoint_and_seeded(glyph_folder):
    collection = read_image_folder(glyph_folder)
    train, valid, test = collection.split(valid=1, test=2, seed=3)
    names = [set(part.identity_names) for part in (train, valid, test)]
    assert [len(n) for n in names] == [5, 1, 2]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    again = collection.split(valid=1, test=2, seed=3)
    assert [p.identity_names for p in again] == [p.identity_names for p in (train, valid, test)]
    assert collection.split(valid=1, test=2, seed=4)[2].identity_names != test.identity_names or \
        collection.split(valid=1, test=2, seed=5)[2].identity_names != test.identity_names
    with pytest.raises(TwinnetError, match="cannot give"):
        collection.split(valid=4, test=4)


def test_training_pairs_are_m_per_class_groups_with_one_entity_per_identity(glyph_folder):
    collection = read_image_folder(glyph_folder)
    identity_of = dict(zip(collection.images, collection.identities))
    pairs = collection.training_pairs(per_class=3, negatives=2, seed=0)
    for left, right, label in zip(pairs.left, pairs.right, pairs.labels):
        assert (identity_of[left] == identity_of[right]) == bool(label)
    # 5 images per identity -> groups of 3 and 2: (2 + 1 chain) and (1 + 1 chain) positives, 2 negatives each
    assert int(pairs.labels.sum()) == 8 * 5 and len(pairs) == 8 * (5 + 4)
    entities = entity_labels(pairs)  # what the trainer derives: connected components of the "same" pairs
    for identity in collection.identity_names:
        assert len({entities[ref] for ref in collection.by_identity()[identity]}) == 1
    assert len(set(entities.values())) == 8


def test_verification_pairs_and_triplets(glyph_folder):
    collection = read_image_folder(glyph_folder).select(["shape0", "shape1", "shape2"])
    exhaustive = collection.verification_pairs(exhaustive=True)
    # 3 identities x C(5, 2) = 30 same pairs; C(15, 2) - 30 = 75 different pairs
    assert int(exhaustive.labels.sum()) == 30 and len(exhaustive) == 105
    sampled = collection.verification_pairs(negatives_per_positive=2, max_positives=10, seed=1)
    assert int(sampled.labels.sum()) == 10 and len(sampled) == 30
    triplets = collection.triplets(per_image=1, seed=0)
    identity_of = dict(zip(collection.images, collection.identities))
    assert len(triplets) == 15
    assert all(identity_of[a] == identity_of[p] != identity_of[n] for a, p, n in triplets)
    pairs = triplets_to_pairs(triplets)
    assert pairs.labels.tolist()[:2] == [1, 0] and len(pairs) == 30


def test_pair_and_triplet_lists_resolve_relative_paths(glyph_folder, tmp_path):
    pd.DataFrame({"left": ["shape0/0.png", "shape0/0.png"], "right": ["shape0/2.jpg", "shape1/1.pgm"],
                  "label": [1, 0]}).to_csv(glyph_folder / "pairs.csv", index=False)
    pairs = read_image_pairs(glyph_folder / "pairs.csv")
    assert pairs.labels.tolist() == [1, 0] and pairs.right[1] == str(glyph_folder / "shape1" / "1.pgm")
    with open(glyph_folder / "triplets.jsonl", "w") as out:
        out.write(json.dumps({"anchor": "shape2/0.png", "positive": "shape2/3.png", "negative": "shape3/0.png"}) + "\n")
    triplets = read_image_pairs(glyph_folder / "triplets.jsonl")
    assert triplets.labels.tolist() == [1, 0] and triplets.left[0] == triplets.left[1]
    pd.DataFrame({"left": [str(glyph_folder / "shape0" / "0.png")], "right": ["shape0/missing.png"], "label": [1]}).to_csv(
        tmp_path / "bad.csv", index=False)
    with pytest.raises(TwinnetError, match=r"bad.csv, row 2, field 'right'.*not found"):
        read_image_pairs(tmp_path / "bad.csv")


def test_idx_collection(tmp_path):
    pixels = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    header = b"\x00\x00\x08\x03" + b"".join(int(d).to_bytes(4, "big") for d in pixels.shape)
    (tmp_path / "img-idx3-ubyte.gz").write_bytes(gzip.compress(header + pixels.tobytes()))
    (tmp_path / "lab-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big")
                                                               + bytes([7, 2, 7])))
    collection = read_idx_collection(tmp_path / "img-idx3-ubyte.gz", tmp_path / "lab-idx1-ubyte.gz", keep=[7])
    assert collection.identities == ["7", "7"] and collection.images[1].endswith("::2")
    assert load_image(collection.images[1], (4, 4))[0].tolist() == pixels[2].tolist()
    with pytest.raises(TwinnetError, match="no item '9'"):
        load_image(f"{tmp_path / 'img-idx3-ubyte.gz'}::9", (4, 4))


def test_rotated_classes(tmp_path):
    image = np.zeros((4, 4), dtype=np.uint8)
    image[0, 3] = 255  # top-right corner
    Image.fromarray(image).save(tmp_path / "c.png")
    turned = load_image(f"{tmp_path / 'c.png'}@rot90", (4, 4))[0]
    assert turned[0, 0] == 255 and turned.sum() == 255  # a quarter turn counter-clockwise: top-left
    collection = ImageCollection([str(tmp_path / "c.png")], ["a"]).with_rotations((90, 180))
    assert collection.identities == ["a", "a@rot90", "a@rot180"]


# ---------------------------------------------------------------------------------------------- encoder
@pytest.mark.parametrize("architecture", ["koch", "resnet"])
def test_encoders_embed_and_round_trip(architecture, glyph_folder, tmp_path):
    model = SiameseModel.for_image(architecture, image_size=16, embedding_dim=12, widths=(4, 8), seed=1)
    images = read_image_folder(glyph_folder).images[:6]
    embeddings = model.embed(images)
    assert embeddings.shape == (6, 12) and np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    model.save(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    config = json.loads((tmp_path / "m" / "config.json").read_text())["twinnet"]["encoder"]
    assert config["type"] == "image" and config["architecture"] == architecture and config["image_size"] == [16, 16]
    loaded = SiameseModel.load(tmp_path / "m")
    assert np.abs(loaded.embed(images) - embeddings).max() < 1e-6
    decision = loaded.verify(images[0], images[0], threshold=0.5)
    assert decision.same and decision.score == pytest.approx(1.0, abs=1e-5)


def test_encoder_rejects_bad_settings():
    with pytest.raises(TwinnetError, match="architecture"):
        ImageEncoder("vgg")
    with pytest.raises(TwinnetError, match="channels"):
        ImageEncoder(channels=2)
    with pytest.raises(TwinnetError, match="too small"):
        ImageEncoder("koch", image_size=8, widths=(4, 4, 4, 4, 4), kernel_sizes=(3, 3, 3, 3, 3))


def test_prepare_error_names_the_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    model = SiameseModel.for_image(image_size=16, widths=(4, 8))
    with pytest.raises(TwinnetError, match="empty.png.*0 bytes"):
        model.embed([str(tmp_path / "empty.png")])


def test_augmentation_only_in_training_mode_and_seeded():
    encoder = ImageEncoder(image_size=16, widths=(4, 8), augment=True, seed=0)
    prepared = [torch.from_numpy(load_image(np.asarray(glyph(k, 0, 16)), (16, 16))) for k in range(4)]
    encoder.eval()
    plain = encoder.collate(prepared)["pixels"]
    assert torch.equal(plain, encoder.collate(prepared)["pixels"])
    assert plain.min() == -1.0 and plain.max() == 1.0  # pixels 0..255 scaled to [-1, 1]
    encoder.train()
    encoder.reseed(7)
    first = encoder.collate(prepared)["pixels"]
    encoder.reseed(7)
    assert torch.equal(first, encoder.collate(prepared)["pixels"])
    assert not torch.equal(first, plain)
    # with every range at zero, the distortion is the identity
    identity = ImageEncoder(image_size=16, widths=(4, 8), augment=Augmentation(0, 0, (1, 1), 0, 0, 0)).train()
    assert torch.allclose(identity.collate(prepared)["pixels"], plain, atol=1e-5)
    # flip alone mirrors left-right, exactly (pixel centres map onto pixel centres)
    mirror = ImageEncoder(image_size=16, widths=(4, 8), augment=Augmentation(0, 0, (1, 1), 0, 0, 0, flip=1.0)).train()
    assert torch.allclose(mirror.collate(prepared)["pixels"], torch.flip(plain, dims=[3]), atol=1e-5)
    with pytest.raises(TwinnetError, match="flip"):
        Augmentation(flip=1.5)


def test_backbone_weights_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    donor = ImageEncoder("resnet", image_size=16, widths=(4, 8), seed=5)
    save_file({f"backbone.{k}": v.contiguous() for k, v in donor.backbone.state_dict().items()},
              str(tmp_path / "backbone.safetensors"))
    fresh = ImageEncoder("resnet", image_size=16, widths=(4, 8), seed=9,
                         backbone_weights=tmp_path / "backbone.safetensors")
    for name, tensor in donor.backbone.state_dict().items():
        assert torch.equal(fresh.backbone.state_dict()[name], tensor)
    assert fresh.config()["initialised_from"].endswith("backbone.safetensors")
    with pytest.raises(TwinnetError, match="backbone.safetensors.*shape"):
        ImageEncoder("resnet", image_size=16, widths=(4, 16), backbone_weights=tmp_path / "backbone.safetensors")
    (tmp_path / "weights.pt").write_bytes(b"pickle")
    with pytest.raises(TwinnetError, match="must be a .safetensors file"):
        ImageEncoder("resnet", image_size=16, widths=(4, 8), backbone_weights=tmp_path / "weights.pt")


def test_binary_head_loss():
    loss = build_loss("binary_head", embedding_dim=3)
    torch.nn.init.zeros_(loss.classifier.weight)
    torch.nn.init.zeros_(loss.classifier.bias)
    embeddings = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], requires_grad=True)
    pairs = (torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([2]))
    value = loss(embeddings, None, pairs)
    assert value.item() == pytest.approx(np.log(2), abs=1e-6)  # logits 0 -> cross-entropy ln 2 per pair
    value.backward()
    assert loss.classifier.weight.grad is not None and loss.last_stats == {"positive_pairs": 1, "negative_pairs": 1}


# ---------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained_glyphs(glyph_folder):
    collection = read_image_folder(glyph_folder)
    train, valid, test = collection.split(valid=2, test=2, seed=0)
    model = SiameseModel.for_image("koch", image_size=16, embedding_dim=16, widths=(8, 16), augment=True, seed=0)
    untrained = evaluate(model.__class__.for_image("koch", image_size=16, embedding_dim=16, widths=(8, 16), seed=0),
                         train.verification_pairs(exhaustive=True), threshold=0.5, bootstrap=0)
    Trainer(model, loss="contrastive+binary_head", epochs=6, batch_size=16, learning_rate=3e-3, progress=False,
            seed=0).fit(train.training_pairs(per_class=3, negatives=2, rounds=2, seed=0),
                        valid.verification_pairs(negatives_per_positive=2, seed=0))
    return model, collection, (train, valid, test), untrained


def test_training_separates_identities(trained_glyphs):
    model, _, (train, _, _), untrained = trained_glyphs
    trained = evaluate(model, train.verification_pairs(exhaustive=True), bootstrap=0)
    assert trained.metrics["roc_auc"] > 0.95 > untrained.metrics["roc_auc"]
    assert model.calibration_ is not None and model.card_["train"]["distinct_texts"] == 20


def test_training_is_deterministic(glyph_folder):
    collection = read_image_folder(glyph_folder).select(["shape0", "shape1", "shape2"])
    runs = []
    for _ in range(2):
        model = SiameseModel.for_image("resnet", image_size=16, embedding_dim=8, widths=(4, 8), augment=True)
        Trainer(model, loss="triplet", epochs=1, batch_size=8, learning_rate=1e-3, progress=False,
                select_best=False).fit(collection.training_pairs(seed=0), collection.verification_pairs(seed=0))
        runs.append(model.embed(collection.images[:4]))
    assert np.array_equal(runs[0], runs[1])


# ---------------------------------------------------------------------------------------------- one-shot
class _Fixed:
    """An embedder that returns a fixed vector per image name."""

    def __init__(self, vectors):
        self.vectors = vectors

    def embed(self, images, **_):
        return np.asarray([self.vectors[i] for i in images], dtype=np.float32)


def test_one_shot_accuracy_by_hand():
    vectors = {"a": [1, 0], "b": [0, 1], "qa": [0.9, 0.1], "qb": [0.8, 0.3], "qb2": [0.1, 1]}
    task = OneShotTask(["a", "b"], ["A", "B"], ["qa", "qb", "qb2"], ["A", "B", "B"])
    report = one_shot_accuracy(_Fixed(vectors), [task])
    assert report.correct == 2 and report.accuracy == pytest.approx(200 / 3)  # qb is closer to "a"
    assert report.mistakes[0]["query"] == "qb" and report.mistakes[0]["chosen"] == "A"
    with pytest.raises(TwinnetError, match="not one of the support classes"):
        OneShotTask(["a"], ["A"], ["q"], ["Z"])


def test_sample_tasks_and_pixel_baseline(glyph_folder):
    collection = read_image_folder(glyph_folder)
    tasks = sample_tasks(collection, ways=4, episodes=5, queries_per_class=2, seed=1)
    assert len(tasks) == 5 and all(t.ways == 4 and len(t.queries) == 8 for t in tasks)
    identity_of = dict(zip(collection.images, collection.identities))
    for task in tasks:
        assert [identity_of[s] for s in task.support] == task.classes
        assert not set(task.support) & set(task.queries)
    assert [t.support for t in sample_tasks(collection, 4, episodes=5, queries_per_class=2, seed=1)] == \
        [t.support for t in tasks]
    pixels = one_shot_accuracy(PixelEmbedder(16), tasks, similarity="euclidean")
    assert pixels.accuracy > 50  # the glyphs differ by shape, so even raw pixels beat chance (25%)
    with pytest.raises(TwinnetError, match="need 9 identities"):
        sample_tasks(collection, ways=9)


def test_omniglot_runs_layout(tmp_path):
    archive = tmp_path / "runs.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for run in ("run01", "run02"):
            labels = []
            for k in (1, 2, 3):
                for part, name in (("training", f"class0{k}.png"), ("test", f"item0{k}.png")):
                    buffer = __import__("io").BytesIO()
                    glyph(k, 0 if part == "training" else 1).save(buffer, format="PNG")
                    out.writestr(f"{run}/{part}/{name}", buffer.getvalue())
                labels.append(f"{run}/test/item0{k}.png {run}/training/class0{4 - k if k != 2 else 2}.png")
            out.writestr(f"{run}/class_labels.txt", "\n".join(labels) + "\n")
    tasks = read_omniglot_runs(archive)
    assert [t.name for t in tasks] == ["run01", "run02"] and tasks[0].ways == 3
    assert tasks[0].answers[0] == f"{archive}::run01/training/class03.png"


def test_official_omniglot_runs():
    path = require_shared_data("omniglot", "all_runs.zip")
    tasks = read_omniglot_runs(path)
    assert len(tasks) == 20 and all(t.ways == 20 and len(t.queries) == 20 for t in tasks)
    assert tasks[0].answers[0].endswith("run01/training/class08.png")  # class_labels.txt, first line


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def cli_model(glyph_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("image-cli")
    result = runner.invoke(app, ["train", str(glyph_folder), "-o", str(root / "model"), "--encoder", "koch",
                                 "--image-size", "16", "--embedding-dim", "16", "--epochs", "2", "--batch-size", "16",
                                 "--valid-identities", "2", "--test-identities", "2", "--loss", "contrastive",
                                 "--threads", "1"])
    assert result.exit_code == 0, result.output
    return root


def test_cli_train_records_the_identity_split(cli_model):
    card = json.loads((cli_model / "model" / "training.json").read_text())
    assert card["image_data"]["identities"] == {"train": 4, "valid": 2, "test": 2}
    trained_on = {ref.split("/")[-2] for ref in card["train_record_ids"]}
    assert not trained_on & set(card["image_data"]["test_identity_names"])


def test_cli_evaluate_report_verify_embed_oneshot(cli_model, glyph_folder):
    model = str(cli_model / "model")
    result = runner.invoke(app, ["evaluate", model, str(glyph_folder), "--split", "test", "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    assert "roc_auc" in result.output and "eer" in result.output
    card = (cli_model / "model" / "README.md").read_text()
    assert "Hardest errors" in card and "examples/" in card
    assert any((cli_model / "model" / "examples").glob("*.png"))
    result = runner.invoke(app, ["report", model, str(glyph_folder), "-o", str(cli_model / "r.html"),
                                 "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    assert '<img class="pair"' in (cli_model / "r.html").read_text()
    a, b = str(glyph_folder / "shape0" / "0.png"), str(glyph_folder / "shape0" / "1.pgm")
    result = runner.invoke(app, ["verify", model, a, b])
    assert result.exit_code == 0, result.output
    decision = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(decision) == {"same", "score", "probability", "threshold"}
    result = runner.invoke(app, ["embed", model, str(glyph_folder), "-o", str(cli_model / "e.npy")])
    assert result.exit_code == 0, result.output
    assert np.load(cli_model / "e.npy").shape == (40, 16)
    result = runner.invoke(app, ["oneshot", model, str(glyph_folder), "--ways", "2", "--episodes", "4",
                                 "--split", "test", "-o", str(cli_model / "o.json")])
    assert result.exit_code == 0, result.output
    saved = json.loads((cli_model / "o.json").read_text())
    assert saved["ways"] == 2 and saved["queries"] == 8 and "pixel_baseline_accuracy" in saved


def test_cli_image_errors_are_one_line(cli_model, glyph_folder, tmp_path):
    result = runner.invoke(app, ["train", str(glyph_folder), "-o", str(tmp_path / "m")])
    assert result.exit_code == 2 and "--encoder koch" in result.output and "Traceback" not in result.output
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = runner.invoke(app, ["verify", str(cli_model / "model"), str(tmp_path / "broken.png"),
                                 str(glyph_folder / "shape0" / "0.png")])
    assert result.exit_code == 2 and "broken.png" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
