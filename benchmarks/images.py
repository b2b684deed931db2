"""Image benchmarks: Omniglot one-shot, ORL face verification, MNIST unseen digits.

Protocol (../shared/BENCHMARKS.md): identities are split disjointly; the threshold and the epoch are chosen on
validation; the test identities (people, characters, digits) are never seen in training and are evaluated once.

- **omniglot**: train on ``images_background_small1`` + ``small2`` (242 characters after merging the 50 shared
  Greek/Latin characters; 10% of the characters held out for validation; the training characters also turned by
  90/180/270 degrees as new classes), evaluate 20-way one-shot accuracy on the 20 official runs (``all_runs.zip``).
  Images are downscaled from 105x105 to 28x28 so that a CPU trains the Koch-style tower in minutes.
- **orl**: 40 people x 10 faces. Per seed: 10 people for test, 5 of the other 30 for validation, 25 for training;
  verification on every pair of the 10 unseen people (450 same, 4,500 different). Faces at 56x46 (half size).
- **orl-face**: the same splits and test pairs with the pretrained face encoder (``SiameseModel.for_faces``: dlib's
  face ResNet, frozen, needs ``twinnet[faces]``). Nothing is trained, so the threshold is calibrated on all 30
  non-test people; the test people stay unseen.
- **mnist**: the 10k test set (the only part in ../shared/data). Train on digits 0-4 (10% of their images held
  out for validation), evaluate same/different pairs and 5-way one-shot episodes on digits 5-9.

Baselines measured in the same run: nearest neighbour / cosine similarity in pixel space on the same pairs and
tasks. Results go to benchmarks/results/images.json and images.md (parts not run keep their previous rows).

    python benchmarks/images.py                          # all four parts
    python benchmarks/images.py --parts orl --seeds 0,1,2
    python benchmarks/images.py --parts orl-face --seeds 0,1,2
    python benchmarks/images.py --quick                  # small slices, a couple of minutes: checks the wiring
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import RESULTS, peak_rss_mb, write_results  # noqa: E402

RECIPES = {
    # 35 px in bfloat16 autocast: a larger input than the 28 px recipe at about the same step cost on a CPU with
    # native bf16 (AVX512-BF16); elsewhere autocast emulates bf16 and the run is slower but gives the same kind of model.
    "omniglot": {"architecture": "koch", "image_size": 35, "widths": [64, 96, 128, 128], "embedding_dim": 128,
                 "invert": True, "loss": "multiple_negatives", "epochs": 40, "batch_size": 80, "learning_rate": 2e-3,
                 "per_class": 4, "negatives": 1, "rotations": True, "mixed_precision": "bf16"},
    "orl": {"architecture": "resnet", "image_size": [56, 46], "widths": [32, 64, 128], "embedding_dim": 128,
            "invert": False, "loss": "multiple_negatives", "epochs": 40, "batch_size": 48, "learning_rate": 2e-3,
            "per_class": 4, "negatives": 1, "rounds": 4},
    "mnist": {"architecture": "koch", "image_size": 28, "widths": [32, 64, 64, 128], "embedding_dim": 64,
              "invert": False, "loss": "multiple_negatives", "epochs": 10, "batch_size": 80, "learning_rate": 2e-3,
              "per_class": 4, "negatives": 1},
}
ANCHORS = {"omniglot": "Koch et al. 2015: 92.0% (full background set, 964 characters, 105 px)",
           "orl": "target EER <= 3%, ROC-AUC >= 0.99 (from scratch on 25 people)",
           "orl-face": "target EER <= 3%, ROC-AUC >= 0.99; dlib's face ResNet: 99.38% on LFW",
           "mnist": "target: +15 points over pixel nearest neighbour"}


def _data(*parts: str) -> Path:
    from twinnet.data.registry import data_roots
    from twinnet.errors import TwinnetError

    for root in data_roots():
        if root.joinpath(*parts).exists():
            return root.joinpath(*parts)
    raise TwinnetError(f"{'/'.join(parts)} not found under {', '.join(map(str, data_roots()))}")


def _model(recipe: dict, seed: int, augment=True):
    from twinnet import SiameseModel

    return SiameseModel.for_image(recipe["architecture"], image_size=recipe["image_size"],
                                  embedding_dim=recipe["embedding_dim"], widths=recipe["widths"],
                                  invert=recipe["invert"], augment=augment, seed=seed)


def _train(model, recipe: dict, train_pairs, valid_pairs, seed: int, epochs: int):
    from twinnet import Trainer

    trainer = Trainer(model, loss=recipe["loss"], epochs=epochs, batch_size=recipe["batch_size"],
                      learning_rate=recipe["learning_rate"], seed=seed, warmup_ratio=0.05, progress=False,
                      mixed_precision=recipe.get("mixed_precision", "no"))
    started = time.perf_counter()
    trainer.fit(train_pairs, valid_pairs)
    return time.perf_counter() - started


def _settings(recipe: dict, seed: int, epochs: int, **extra) -> dict:
    return {**recipe, "epochs": epochs, "seed": seed, **extra}


def _verification_rows(dataset: str, method: str, metrics: dict, wall: float, settings: dict) -> list[dict]:
    common = {"dataset": dataset, "method": method, "roc_auc": round(metrics["roc_auc"], 4),
              "eer_percent": round(100 * metrics["eer"], 2), "tar_at_far_1e-2": round(metrics["tar_at_far_1e-2"], 4),
              "f1": round(100 * metrics["f1"], 2) if "f1" in metrics else None,
              "threshold": round(metrics.get("threshold", float("nan")), 6), "wall_s": round(wall, 1),
              "peak_rss_mb": round(peak_rss_mb(), 1), "settings": settings}
    return [{**common, "metric": "eer", "value": round(100 * metrics["eer"], 2)},
            {**common, "metric": "roc_auc", "value": round(metrics["roc_auc"], 4)}]


def _pixel_metrics(pairs, image_size, channels: int = 1) -> dict:
    """Cosine similarity of raw pixels on the same pairs (threshold-free metrics only)."""
    import numpy as np

    from twinnet.metrics import equal_error_rate, tar_at_far
    from twinnet.oneshot import PixelEmbedder
    from sklearn.metrics import roc_auc_score

    embedder = PixelEmbedder(image_size, channels)
    left, right = embedder.embed(pairs.left), embedder.embed(pairs.right)
    left = left - left.mean(axis=1, keepdims=True)
    right = right - right.mean(axis=1, keepdims=True)
    scores = (left * right).sum(1) / np.clip(np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1), 1e-12, None)
    return {"roc_auc": float(roc_auc_score(pairs.labels, scores)), "eer": equal_error_rate(pairs.labels, scores)[0],
            "tar_at_far_1e-2": tar_at_far(pairs.labels, scores, 1e-2)}


# ---------------------------------------------------------------------------------------------- parts
def run_omniglot(quick: bool, seed: int = 0, epochs: int = 0) -> list[dict]:
    from twinnet.data.images import merge_collections, read_image_folder
    from twinnet.oneshot import PixelEmbedder, one_shot_accuracy, read_omniglot_runs

    recipe = dict(RECIPES["omniglot"])
    epochs = epochs or (2 if quick else recipe["epochs"])
    folder = _data("omniglot")
    characters = merge_collections(read_image_folder(folder / "images_background_small1.zip"),
                                   read_image_folder(folder / "images_background_small2.zip"), name="omniglot")
    if quick:
        characters = characters.select(characters.identity_names[::6])
    train, valid, _ = characters.split(valid=0.1, test=0, seed=seed)
    if recipe["rotations"]:
        train = train.with_rotations()
    train_pairs = train.training_pairs(recipe["per_class"], recipe["negatives"], seed=seed)
    valid_pairs = valid.verification_pairs(seed=seed)
    tasks = read_omniglot_runs(folder / "all_runs.zip")
    if quick:
        tasks = tasks[:4]
    model = _model(recipe, seed)
    wall = _train(model, recipe, train_pairs, valid_pairs, seed, epochs)
    ours = one_shot_accuracy(model, tasks)
    pixels = one_shot_accuracy(PixelEmbedder(recipe["image_size"]), tasks, similarity="euclidean")
    settings = _settings(recipe, seed, epochs, train_characters=len(train.identity_names),
                         valid_characters=len(valid.identity_names), runs=len(tasks),
                         selected_epoch=model.card_.get("selected_epoch"))
    base = {"dataset": "Omniglot 20 official runs", "metric": "accuracy_20way", "ways": 20, "runs": len(tasks),
            "peak_rss_mb": round(peak_rss_mb(), 1)}
    return [{**base, "method": "twinnet", "value": round(ours.accuracy, 2),
             "per_run": [round(a, 1) for a in ours.per_task], "wall_s": round(wall, 1), "settings": settings},
            {**base, "method": "pixel_nn", "value": round(pixels.accuracy, 2),
             "settings": {"image_size": recipe["image_size"], "similarity": "euclidean"}}]


def run_orl(quick: bool, seeds: list[int], epochs: int = 0) -> list[dict]:
    import numpy as np

    from twinnet.data.images import read_image_folder
    from twinnet.evaluation import evaluate

    recipe = dict(RECIPES["orl"])
    epochs = epochs or (3 if quick else recipe["epochs"])
    people = read_image_folder(_data("orl_faces"))
    rows, per_seed = [], []
    for seed in seeds:
        train, valid, test = people.split(valid=5, test=10, seed=seed)
        if quick:
            train = train.select(train.identity_names[:8])
        model = _model(recipe, seed)
        wall = _train(model, recipe, train.training_pairs(recipe["per_class"], recipe["negatives"],
                                                          rounds=recipe["rounds"], seed=seed),
                      valid.verification_pairs(exhaustive=True, seed=seed), seed, epochs)
        test_pairs = test.verification_pairs(exhaustive=True, seed=seed)
        report = evaluate(model, test_pairs, bootstrap=0)
        pixels = _pixel_metrics(test_pairs, recipe["image_size"])
        settings = _settings(recipe, seed, epochs, train_people=len(train.identity_names),
                             valid_people=len(valid.identity_names), test_people=test.identity_names,
                             test_pairs=len(test_pairs), selected_epoch=model.card_.get("selected_epoch"))
        rows += [{**r, "seed": seed} for r in _verification_rows("ORL faces, unseen people", "twinnet",
                                                                  report.metrics, wall, settings)]
        rows += [{**r, "seed": seed} for r in _verification_rows("ORL faces, unseen people", "pixel_cosine",
                                                                  pixels, 0.0, {"image_size": recipe["image_size"]})]
        per_seed.append((report.metrics["eer"], report.metrics["roc_auc"], pixels["eer"], pixels["roc_auc"]))
    mean = np.mean(np.asarray(per_seed), axis=0)
    summary = {"dataset": "ORL faces, unseen people", "seed": "mean", "seeds": seeds,
               "peak_rss_mb": round(peak_rss_mb(), 1)}
    rows += [{**summary, "method": "twinnet", "metric": "eer", "value": round(100 * mean[0], 2)},
             {**summary, "method": "twinnet", "metric": "roc_auc", "value": round(mean[1], 4)},
             {**summary, "method": "pixel_cosine", "metric": "eer", "value": round(100 * mean[2], 2)},
             {**summary, "method": "pixel_cosine", "metric": "roc_auc", "value": round(mean[3], 4)}]
    return rows


def run_orl_face(quick: bool, seeds: list[int]) -> list[dict]:
    import numpy as np

    from twinnet import SiameseModel
    from twinnet.data.images import read_image_folder
    from twinnet.evaluation import evaluate

    people = read_image_folder(_data("orl_faces"))
    dataset = "ORL faces, unseen people (pretrained face encoder)"
    model = SiameseModel.for_faces()  # descriptors are cached per file, so later seeds reuse them
    rows, per_seed = [], []
    for seed in seeds:
        train, valid, test = people.split(valid=5, test=10, seed=seed)  # the splits of the `orl` part
        calibration_people = people.select([*train.identity_names, *valid.identity_names])
        if quick:
            calibration_people = calibration_people.select(calibration_people.identity_names[:8])
        started = time.perf_counter()
        model.calibrate(calibration_people.verification_pairs(exhaustive=True, seed=seed))
        wall = time.perf_counter() - started
        test_pairs = test.verification_pairs(exhaustive=True, seed=seed)
        report = evaluate(model, test_pairs, bootstrap=0)
        pixels = _pixel_metrics(test_pairs, RECIPES["orl"]["image_size"])
        settings = {"encoder": "face (dlib_face_recognition_resnet_model_v1, 5-point alignment)", "trained": False,
                    "calibration_people": len(calibration_people.identity_names), "test_people": test.identity_names,
                    "test_pairs": len(test_pairs), "seed": seed, "undetected_faces": len(model.encoder.undetected_),
                    "valid_f1": round(100 * model.calibration_.operating_point_["f1"], 2)}
        rows += [{**r, "seed": seed, "part": "orl-face"} for r in
                 _verification_rows(dataset, "twinnet", report.metrics, wall, settings)]
        rows += [{**r, "seed": seed, "part": "orl-face"} for r in
                 _verification_rows(dataset, "pixel_cosine", pixels, 0.0, {"image_size": RECIPES["orl"]["image_size"]})]
        per_seed.append((report.metrics["eer"], report.metrics["roc_auc"], pixels["eer"], pixels["roc_auc"],
                         report.metrics["f1"]))
    mean = np.mean(np.asarray(per_seed), axis=0)
    summary = {"dataset": dataset, "seed": "mean", "seeds": seeds, "peak_rss_mb": round(peak_rss_mb(), 1),
               "part": "orl-face"}
    return rows + [{**summary, "method": "twinnet", "metric": "eer", "value": round(100 * mean[0], 2)},
                   {**summary, "method": "twinnet", "metric": "roc_auc", "value": round(mean[1], 4)},
                   {**summary, "method": "twinnet", "metric": "f1", "value": round(100 * mean[4], 2)},
                   {**summary, "method": "pixel_cosine", "metric": "eer", "value": round(100 * mean[2], 2)},
                   {**summary, "method": "pixel_cosine", "metric": "roc_auc", "value": round(mean[3], 4)}]


def run_mnist(quick: bool, seed: int = 0, epochs: int = 0) -> list[dict]:
    import numpy as np

    from twinnet.data.images import ImageCollection, read_idx_collection
    from twinnet.evaluation import evaluate
    from twinnet.oneshot import PixelEmbedder, one_shot_accuracy, sample_tasks

    recipe = dict(RECIPES["mnist"])
    epochs = epochs or (2 if quick else recipe["epochs"])
    folder = _data("mnist")
    images, labels = folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz"
    seen = read_idx_collection(images, labels, keep=range(5))
    unseen = read_idx_collection(images, labels, keep=range(5, 10))
    if quick:
        seen = ImageCollection(seen.images[::10], seen.identities[::10], name="mnist 0-4")
        unseen = ImageCollection(unseen.images[::10], unseen.identities[::10], name="mnist 5-9")
    # digits 0-4 are the only training classes, so validation holds out 10% of their images (not classes);
    # the test classes 5-9 stay unseen
    order = np.random.default_rng(seed).permutation(len(seen))
    cut = len(seen) // 10
    valid = ImageCollection([seen.images[i] for i in order[:cut]], [seen.identities[i] for i in order[:cut]])
    train = ImageCollection([seen.images[i] for i in order[cut:]], [seen.identities[i] for i in order[cut:]])
    model = _model(recipe, seed)
    wall = _train(model, recipe, train.training_pairs(recipe["per_class"], recipe["negatives"], seed=seed),
                  valid.verification_pairs(max_positives=3000, seed=seed), seed, epochs)
    test_pairs = unseen.verification_pairs(max_positives=500 if quick else 5000, seed=seed)
    report = evaluate(model, test_pairs, bootstrap=0)
    pixels = _pixel_metrics(test_pairs, recipe["image_size"])
    tasks = sample_tasks(unseen, ways=5, episodes=100 if quick else 1000, queries_per_class=1, seed=seed)
    ours = one_shot_accuracy(model, tasks)
    pixel_nn = one_shot_accuracy(PixelEmbedder(recipe["image_size"]), tasks, similarity="euclidean")
    settings = _settings(recipe, seed, epochs, train_images=len(train), valid_images=len(valid),
                         test_pairs=len(test_pairs), episodes=len(tasks), selected_epoch=model.card_.get("selected_epoch"))
    base = {"dataset": "MNIST digits 5-9 (trained on 0-4)", "peak_rss_mb": round(peak_rss_mb(), 1)}
    rows = [{**base, "method": "twinnet", "metric": "accuracy_5way", "value": round(ours.accuracy, 2),
             "episodes": len(tasks), "wall_s": round(wall, 1), "settings": settings},
            {**base, "method": "pixel_nn", "metric": "accuracy_5way", "value": round(pixel_nn.accuracy, 2),
             "episodes": len(tasks), "settings": {"similarity": "euclidean"}}]
    rows += _verification_rows(base["dataset"], "twinnet", report.metrics, wall, settings)
    rows += _verification_rows(base["dataset"], "pixel_cosine", pixels, 0.0, {"image_size": recipe["image_size"]})
    return rows


# ---------------------------------------------------------------------------------------------- output
def markdown(results: list[dict]) -> str:
    lines = ["| dataset | metric | twinnet | pixel baseline | anchor / target | train wall s | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    keyed = {(r["dataset"], r["metric"], r["method"], str(r.get("seed", ""))): r for r in results}
    shown = set()
    for r in results:
        if r["method"] != "twinnet" or r.get("seed") not in (None, "mean"):
            continue
        key = (r["dataset"], r["metric"])
        if key in shown:
            continue
        shown.add(key)
        seed = str(r.get("seed", ""))
        base = keyed.get((r["dataset"], r["metric"], "pixel_nn", seed)) or \
            keyed.get((r["dataset"], r["metric"], "pixel_cosine", seed))
        part = r.get("part") or next(k for k in ANCHORS if k in r["dataset"].lower())
        walls = [x["wall_s"] for x in results if x["dataset"] == r["dataset"] and x["method"] == "twinnet"
                 and x.get("wall_s")]
        metric = f"{r['metric']} (mean of seeds {r['seeds']})" if r.get("seed") == "mean" else r["metric"]
        lines.append(f"| {r['dataset']} | {metric} | **{r['value']}** | {base['value'] if base else ''} | "
                     f"{ANCHORS[part]} | {round(sum(walls) / len(walls), 1) if walls else ''} | {r['peak_rss_mb']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="omniglot,orl,orl-face,mnist")
    parser.add_argument("--seeds", default="0,1,2", help="ORL seeds (identity splits and initialisation)")
    parser.add_argument("--epochs", type=int, default=0, help="override every recipe's epochs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--quick", action="store_true", help="small slices and 2-3 epochs: checks the wiring")
    parser.add_argument("--recipe", default="", help='JSON merged into each selected part\'s recipe, e.g. '
                        '\'{"image_size": 35, "mixed_precision": "bf16"}\'')
    parser.add_argument("--output", default="images", help="results name (benchmarks/results/NAME.json/.md)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.recipe:
        for recipe in RECIPES.values():
            recipe.update(json.loads(args.recipe))
    runners = {"omniglot": lambda: run_omniglot(args.quick, epochs=args.epochs),
               "orl": lambda: run_orl(args.quick, seeds, epochs=args.epochs),
               "orl-face": lambda: run_orl_face(args.quick, seeds),
               "mnist": lambda: run_mnist(args.quick, epochs=args.epochs)}
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in runners]
    if unknown:
        parser.error(f"unknown part {unknown[0]!r}; choose from {', '.join(runners)}")
    previous = RESULTS / f"{args.output}.json"
    old = json.loads(previous.read_text()) if previous.exists() else {"results": [], "command": ""}
    results = old["results"]
    # which command produced which parts: "parts: command" entries joined by " ; "; parts run now are replaced
    this_run = f"{','.join(parts)}: " + " ".join([Path(sys.executable).name, *sys.argv])
    earlier = []
    for entry in filter(None, old["command"].split(" ; ")):
        ran, _, command = entry.partition(": ")
        kept = [p for p in ran.split(",") if p not in parts]
        if kept:
            earlier.append(f"{','.join(kept)}: {command}")
    for part in parts:
        started = time.perf_counter()
        rows = runners[part]()
        dataset = rows[0]["dataset"]
        results = [r for r in results if r["dataset"] != dataset] + rows
        print(f"{part}: {time.perf_counter() - started:.0f} s", flush=True)
        for r in rows:
            if r.get("seed") in (None, "mean"):  # per-seed rows are in the JSON
                print(f"  {r['method']:>12} {r['metric']:<15} {r['value']}", flush=True)
        write_results(args.output, results, " ; ".join([*earlier, this_run]))
        (RESULTS / f"{args.output}.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
