"""N-way one-shot evaluation: given one example of each of N classes, name the class of a query.

A task holds a *support set* (one image per class) and queries; a model answers each query with the class of the
most similar support image (cosine similarity of its embeddings), so one-shot accuracy measures the embedding
space directly, with no threshold. Tasks come from the official Omniglot runs (``all_runs.zip``:
``runNN/class_labels.txt`` maps each test image to its training image) or are sampled from an
:class:`~twinnet.data.images.ImageCollection` with a seed.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twinnet.data.images import MEMBER, ImageCollection, load_image
from twinnet.errors import TwinnetError


@dataclass
class OneShotTask:
    """``support[i]`` is the one example of class ``classes[i]``; ``answers[j]`` is the class of ``queries[j]``."""

    support: list[Any]
    classes: list[str]
    queries: list[Any]
    answers: list[str]
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.support) != len(self.classes) or len(self.queries) != len(self.answers):
            raise TwinnetError(f"task {self.name}: support/classes or queries/answers differ in length")
        if len(set(self.classes)) != len(self.classes):
            raise TwinnetError(f"task {self.name}: a one-shot task has one support example per class")
        unknown = sorted(set(self.answers) - set(self.classes))
        if unknown:
            raise TwinnetError(f"task {self.name}: answer {unknown[0]!r} is not one of the support classes")

    @property
    def ways(self) -> int:
        return len(self.classes)


@dataclass
class OneShotReport:
    """Accuracy over all queries (%), per task, and how it was measured."""

    accuracy: float
    per_task: list[float]
    queries: int
    ways: int
    tasks: int
    correct: int
    mistakes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "ways": self.ways, "tasks": self.tasks, "queries": self.queries,
                "correct": self.correct, "per_task": self.per_task, "mistakes": self.mistakes}


class PixelEmbedder:
    """The pixel-space baseline: an image's embedding is its resized pixels (grey or RGB, 0-1), flattened.
    With ``similarity="euclidean"`` in :func:`one_shot_accuracy` this is nearest neighbour in pixel space."""

    normalize = False

    def __init__(self, image_size: int | tuple[int, int] = 28, channels: int = 1, resize: str = "stretch") -> None:
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.channels = channels
        self.resize = resize

    def embed(self, images: Sequence[Any], **_: Any) -> np.ndarray:
        rows = [load_image(x, self.image_size, self.channels, self.resize, where=f"item {i}").reshape(-1)
                for i, x in enumerate(images)]
        return np.asarray(rows, dtype=np.float32) / 255.0


def one_shot_accuracy(model: Any, tasks: Sequence[OneShotTask], *, similarity: str = "cosine",
                      batch_size: int = 128, keep_mistakes: int = 20) -> OneShotReport:
    """Answer every query of every task with its nearest support example; ``model`` is anything with
    ``embed(images) -> array`` (a :class:`~twinnet.model.SiameseModel`, :class:`PixelEmbedder`, ...).

    ``similarity``: ``cosine`` (the model's score) or ``euclidean`` (negative distance). Every distinct image is
    embedded once across all tasks."""
    if not tasks:
        raise TwinnetError("no one-shot tasks to evaluate")
    if similarity not in ("cosine", "euclidean"):
        raise TwinnetError(f"similarity must be cosine or euclidean, got {similarity!r}")
    position: dict[Any, int] = {}
    distinct: list[Any] = []
    for task in tasks:
        for image in (*task.support, *task.queries):
            key = image if isinstance(image, str) else id(image)
            if key not in position:
                position[key] = len(distinct)
                distinct.append(image)
    vectors = np.asarray(model.embed(distinct, batch_size=batch_size), dtype=np.float64)
    if similarity == "cosine":
        vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)

    def rows(images: Sequence[Any]) -> np.ndarray:
        return vectors[[position[x if isinstance(x, str) else id(x)] for x in images]]

    per_task, correct, total, mistakes = [], 0, 0, []
    for task in tasks:
        support, queries = rows(task.support), rows(task.queries)
        if similarity == "cosine":
            scores = queries @ support.T
        else:  # negative squared distance: the nearest neighbour scores highest
            scores = -(((queries[:, None, :] - support[None, :, :]) ** 2).sum(-1))
        chosen = np.argmax(scores, axis=1)
        hits = [task.classes[c] == answer for c, answer in zip(chosen, task.answers)]
        per_task.append(100.0 * float(np.mean(hits)))
        correct += int(sum(hits))
        total += len(hits)
        for j, hit in enumerate(hits):
            if not hit and len(mistakes) < keep_mistakes:
                mistakes.append({"task": task.name, "query": str(task.queries[j]), "answer": task.answers[j],
                                 "chosen": task.classes[chosen[j]], "score": float(scores[j, chosen[j]])})
    return OneShotReport(100.0 * correct / total, per_task, total, max(t.ways for t in tasks), len(tasks), correct,
                         mistakes)


def read_omniglot_runs(path: str | os.PathLike[str]) -> list[OneShotTask]:
    """The 20 official Omniglot one-shot runs from ``all_runs.zip`` (read in place) or its extracted folder.

    Each ``runNN/class_labels.txt`` line is ``runNN/test/itemXX.png runNN/training/classYY.png``: the test image
    and the training image of its class. The 20 training images are the support set."""
    source = Path(path)
    if not source.exists():
        raise TwinnetError("Omniglot runs not found (expected all_runs.zip or its folder)", file=source)
    if source.is_file():
        try:
            archive = zipfile.ZipFile(source)
        except zipfile.BadZipFile:
            raise TwinnetError("not a zip archive", file=source) from None
        names = archive.namelist()

        def read(member: str) -> str:
            return archive.read(member).decode("utf-8")

        def ref(member: str) -> str:
            return f"{source}{MEMBER}{member}"
    else:
        names = [p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()]

        def read(member: str) -> str:
            return (source / member).read_text(encoding="utf-8")

        def ref(member: str) -> str:
            return str(source / member)
    label_files = sorted(n for n in names if n.endswith("class_labels.txt"))
    if not label_files:
        raise TwinnetError("no runNN/class_labels.txt in it; is this the Omniglot all_runs archive?", file=source)
    available = set(names)
    tasks = []
    for label_file in label_files:
        run = label_file.rsplit("/", 1)[0] if "/" in label_file else ""
        prefix = f"{run}/" if run else ""
        support = sorted(n for n in names if n.startswith(f"{prefix}training/") and n.endswith(".png"))
        queries, answers = [], []
        for row, line in enumerate(read(label_file).splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise TwinnetError("expected 'test_image training_image'", file=f"{source}{MEMBER}{label_file}",
                                   row=row)
            test, train = parts
            for member in (test, train):
                if member not in available:
                    raise TwinnetError(f"{member} is not in the archive", file=f"{source}{MEMBER}{label_file}",
                                       row=row)
            queries.append(ref(test))
            answers.append(ref(train))
        tasks.append(OneShotTask([ref(s) for s in support], [ref(s) for s in support], queries, answers,
                                 name=run or label_file))
    return tasks


def sample_tasks(collection: ImageCollection, ways: int, *, episodes: int = 100, queries_per_class: int = 1,
                 seed: int = 0) -> list[OneShotTask]:
    """Seeded N-way one-shot episodes: ``ways`` identities with at least 1 + ``queries_per_class`` images each;
    one image per identity is the support example, others are queries."""
    groups = {k: v for k, v in collection.by_identity().items() if len(v) >= 1 + queries_per_class}
    if ways < 2:
        raise TwinnetError(f"one-shot tasks need at least 2 ways, got {ways}")
    if len(groups) < ways:
        raise TwinnetError(f"{ways}-way tasks need {ways} identities with at least {1 + queries_per_class} images; "
                           f"{collection.name or 'the collection'} has {len(groups)}")
    rng = np.random.default_rng(seed)
    names = sorted(groups)
    tasks = []
    for episode in range(episodes):
        chosen = [names[i] for i in rng.choice(len(names), size=ways, replace=False)]
        support, queries, answers = [], [], []
        for identity in chosen:
            images = groups[identity]
            picks = rng.choice(len(images), size=1 + queries_per_class, replace=False)
            support.append(images[picks[0]])
            queries += [images[i] for i in picks[1:]]
            answers += [identity] * queries_per_class
        tasks.append(OneShotTask(support, chosen, queries, answers, name=f"episode {episode + 1}"))
    return tasks
