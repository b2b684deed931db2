"""Images as records: references, decoding, folder-per-identity collections, pair and triplet lists.

An image record is usually a **reference string**, so that it can be hashed, sorted, stored in a pair file and
named in an error message:

- ``path/to/face.png`` -- a file (PNG, JPEG, or Netpbm PGM/PPM/PBM);
- ``archive.zip::folder/image.png`` -- a member of a zip archive, read in place (never extracted);
- ``t10k-images-idx3-ubyte.gz::123`` -- image 123 of an IDX file (the MNIST format, gzip or not);
- any of these followed by ``@rot90``, ``@rot180`` or ``@rot270`` -- the image turned by that many degrees
  (counter-clockwise), which :meth:`ImageCollection.with_rotations` uses to make new classes from old ones.

Raw ``bytes``, NumPy arrays (H×W or H×W×C, uint8 or floats in [0, 1]) and Pillow images are accepted where
images are embedded or verified, but training needs references (the trainer de-duplicates inputs by value).

Every image is decoded to the encoder's channel mode (grey ``L`` or ``RGB``) and resized to its fixed size:
``stretch`` (default) resamples to exactly that size, ``crop`` first cuts the largest centred box of the target
aspect ratio. Images of mixed sizes are therefore fine. Anything that cannot be decoded -- a zero-byte,
truncated or corrupt file, or a format other than PNG/JPEG/PGM -- is a :class:`~twinnet.errors.TwinnetError`
that names the file.
"""

from __future__ import annotations

import gzip
import io
import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from twinnet.data.pairs import PairDataset
from twinnet.errors import TwinnetError

# Pillow format names we decode, by file extension.
IMAGE_EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".pgm": "PPM", ".ppm": "PPM", ".pbm": "PPM"}
# Image files we recognise but do not support: refused with a clear message rather than silently skipped.
UNSUPPORTED_EXTENSIONS = {".gif", ".bmp", ".tif", ".tiff", ".webp", ".heic", ".avif", ".svg", ".ico"}
IDX_SUFFIXES = ("-ubyte", "-ubyte.gz", ".idx", ".idx.gz")
RESIZE_POLICIES = ("stretch", "crop")
MEMBER = "::"
ROTATIONS = {"@rot90": 90, "@rot180": 180, "@rot270": 270}


def split_rotation(ref: str) -> tuple[str, int]:
    """``("a.png", 90)`` for ``"a.png@rot90"``; ``(ref, 0)`` when there is no rotation suffix."""
    for suffix, angle in ROTATIONS.items():
        if ref.endswith(suffix):
            return ref[: -len(suffix)], angle
    return ref, 0


# --------------------------------------------------------------------------- references
def is_image_ref(value: Any) -> bool:
    """True for a string that names an image file, a zip member image or an IDX item (by its extension)."""
    if not isinstance(value, (str, os.PathLike)):
        return False
    text = split_rotation(str(value))[0]
    container, _, member = text.partition(MEMBER)
    if member and container.endswith(IDX_SUFFIXES):
        return member.isdigit()
    suffix = Path(member or container).suffix.lower()
    return suffix in IMAGE_EXTENSIONS or suffix in UNSUPPORTED_EXTENSIONS


def looks_like_image(value: Any) -> bool:
    """An image reference or in-memory image (bytes, array, Pillow image)."""
    if is_image_ref(value) or isinstance(value, (bytes, bytearray)):
        return True
    if isinstance(value, np.ndarray):
        return value.ndim in (2, 3)
    return type(value).__module__.startswith("PIL.")


@lru_cache(maxsize=16)
def _zip(path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise TwinnetError("zip archive not found", file=path) from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise TwinnetError(f"not a readable zip archive ({exc})", file=path) from None


@lru_cache(maxsize=4)
def read_idx(path: str) -> np.ndarray:
    """All items of an IDX file (``magic, dims, data``; MNIST's format), gzip or plain, as a uint8 array."""
    try:
        raw = Path(path).read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise TwinnetError("IDX file not found", file=path) from None
    except (OSError, EOFError) as exc:
        raise TwinnetError(f"cannot read IDX file ({exc})", file=path) from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise TwinnetError("not an unsigned-byte IDX file (bad magic number)", file=path)
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    start = 4 + 4 * dims
    if len(raw) - start != int(np.prod(shape)):
        raise TwinnetError(f"IDX file is truncated: header says {shape}, data has {len(raw) - start} bytes", file=path)
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(shape)


def read_ref_bytes(ref: str) -> bytes:
    """The encoded bytes of a file or zip-member reference."""
    container, _, member = ref.partition(MEMBER)
    if member:
        archive = _zip(container)
        try:
            return archive.read(member)
        except KeyError:
            raise TwinnetError(f"no member {member!r} in the archive", file=container) from None
        except (zipfile.BadZipFile, OSError) as exc:
            raise TwinnetError(f"cannot read {member!r} from the archive ({exc})", file=container) from None
    try:
        return Path(ref).read_bytes()
    except FileNotFoundError:
        raise TwinnetError("image file not found", file=ref) from None
    except IsADirectoryError:
        raise TwinnetError("is a folder, not an image file", file=ref) from None
    except OSError as exc:
        raise TwinnetError(f"cannot read image file ({exc.strerror or exc})", file=ref) from None


def decode_image(item: Any, *, where: str = "item") -> Any:
    """A fully loaded Pillow image from a reference, bytes, array or Pillow image (errors name ``where``)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(item, os.PathLike):
        item = os.fspath(item)
    if isinstance(item, str):
        base, angle = split_rotation(item)
        if angle:
            # exact quarter turns: no interpolation, no cropped corners
            return decode_image(base, where=where).rotate(angle, expand=True)
        where = item
        container, _, member = item.partition(MEMBER)
        if member and container.endswith(IDX_SUFFIXES):
            items = read_idx(container)
            if not member.isdigit() or int(member) >= len(items):
                raise TwinnetError(f"no item {member!r} in the IDX file ({len(items)} items)", file=container)
            return Image.fromarray(items[int(member)])
        suffix = Path(member or container).suffix.lower()
        if suffix not in IMAGE_EXTENSIONS:
            raise TwinnetError(f"unsupported image format {suffix or '(no extension)'!r}; use PNG, JPEG or PGM",
                               file=item)
        data = read_ref_bytes(item)
    elif isinstance(item, (bytes, bytearray)):
        data = bytes(item)
    elif isinstance(item, np.ndarray):
        return _array_image(item, where)
    elif type(item).__module__.startswith("PIL."):
        return item
    else:
        raise TwinnetError(f"{where} is {type(item).__name__}; an image is a path, zip::member reference, bytes, "
                           "a NumPy array or a Pillow image")
    if not data:
        raise TwinnetError("image is empty (0 bytes)", file=where)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode now: a truncated file fails here, not later inside a batch
    except UnidentifiedImageError:
        raise TwinnetError("not a readable image (corrupt, or not PNG/JPEG/PGM)", file=where) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise TwinnetError(f"image is corrupt or truncated ({exc})", file=where) from None
    if image.format not in set(IMAGE_EXTENSIONS.values()):
        raise TwinnetError(f"unsupported image format {image.format}; use PNG, JPEG or PGM", file=where)
    return image


def _array_image(array: np.ndarray, where: str) -> Any:
    from PIL import Image

    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise TwinnetError(f"{where}: an image array must be H×W or H×W×3, got shape {array.shape}")
    if array.dtype != np.uint8:
        values = np.asarray(array, dtype=np.float64)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise TwinnetError(f"{where}: a float image array must hold finite values in [0, 1]")
        array = np.round(values * 255).astype(np.uint8)
    return Image.fromarray(array)


def load_image(item: Any, size: tuple[int, int], channels: int = 1, resize: str = "stretch", *,
               where: str = "item") -> np.ndarray:
    """Decode one image to a ``channels × height × width`` uint8 array (see the module docstring for the policy)."""
    from PIL import Image

    if resize not in RESIZE_POLICIES:
        raise TwinnetError(f"resize must be one of {RESIZE_POLICIES}, got {resize!r}")
    image = decode_image(item, where=where)
    image = image.convert("L" if channels == 1 else "RGB")
    height, width = size
    if resize == "crop":
        # the largest centred box with the target aspect ratio, so faces are not squashed
        scale = min(image.width / width, image.height / height)
        box_w, box_h = width * scale, height * scale
        left, top = (image.width - box_w) / 2, (image.height - box_h) / 2
        image = image.crop((round(left), round(top), round(left + box_w), round(top + box_h)))
    if image.size != (width, height):
        # area averaging when shrinking keeps thin strokes (Omniglot) visible; bilinear when enlarging
        shrinking = image.width >= width and image.height >= height
        image = image.resize((width, height), Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR)
    array = np.array(image, dtype=np.uint8)  # a writable copy: torch refuses read-only buffers
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy()


# --------------------------------------------------------------------------- collections
@dataclass
class ImageCollection:
    """Images labelled with the identity (person, character, class) they show.

    ``images`` are references (see the module docstring), ``identities`` one label per image.
    """

    images: list[str]
    identities: list[str]
    name: str = ""
    _index: dict[str, list[int]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.images) != len(self.identities):
            raise ValueError(f"{len(self.images)} images but {len(self.identities)} identities")
        self.identities = [str(i) for i in self.identities]
        for i, identity in enumerate(self.identities):
            self._index.setdefault(identity, []).append(i)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def identity_names(self) -> list[str]:
        return sorted(self._index)

    def by_identity(self) -> dict[str, list[str]]:
        return {k: [self.images[i] for i in self._index[k]] for k in self.identity_names}

    def select(self, identities: Iterable[str], name: str | None = None) -> ImageCollection:
        keep = set(identities)
        rows = [i for i, identity in enumerate(self.identities) if identity in keep]
        return ImageCollection([self.images[i] for i in rows], [self.identities[i] for i in rows],
                               name=self.name if name is None else name)

    def with_rotations(self, angles: Sequence[int] = (90, 180, 270)) -> ImageCollection:
        """The collection plus, for each angle, every identity turned by it as a new identity
        (``identity@rot90``). For characters a turned symbol is a different symbol, so this multiplies the
        classes a few-shot model learns from (a standard Omniglot practice); it is not for faces."""
        images, identities = list(self.images), list(self.identities)
        for angle in angles:
            suffix = f"@rot{int(angle)}"
            if suffix not in ROTATIONS:
                raise TwinnetError(f"rotation angles are 90, 180 or 270, got {angle}")
            images += [ref + suffix for ref in self.images]
            identities += [identity + suffix for identity in self.identities]
        return ImageCollection(images, identities, name=f"{self.name}+rotations" if self.name else "rotations")

    def split(self, valid: float = 0.15, test: float = 0.15, *, seed: int = 0
              ) -> tuple[ImageCollection, ImageCollection, ImageCollection]:
        """Train, valid and test collections with **disjoint identities** (shuffled with ``seed``).

        ``valid`` / ``test``: a fraction of the identities (below 1) or a number of identities (1 or more); each
        non-zero share gets at least one identity.
        """
        names = self.identity_names
        order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]

        def count(share: float) -> int:
            if share < 0:
                raise TwinnetError(f"identity shares must be >= 0, got {share}")
            return int(share) if share >= 1 else (max(1, round(share * len(names))) if share > 0 else 0)

        n_test, n_valid = count(test), count(valid)
        if n_test + n_valid >= len(names):
            raise TwinnetError(f"{self.name or 'collection'}: {len(names)} identities cannot give {n_valid} for "
                               f"valid, {n_test} for test and at least one for training")
        test_ids, valid_ids, train_ids = order[:n_test], order[n_test: n_test + n_valid], order[n_test + n_valid:]
        return (self.select(train_ids, f"{self.name}/train"), self.select(valid_ids, f"{self.name}/valid"),
                self.select(test_ids, f"{self.name}/test"))

    def _require_positive_pairs(self) -> None:
        if not any(len(rows) >= 2 for rows in self._index.values()):
            raise TwinnetError(f"every identity has a single image, so no 'same' pair is possible "
                               f"({len(self._index)} identities); put two or more images in an identity's folder",
                               file=self.name or None)
        if len(self._index) < 2:
            raise TwinnetError("only one identity, so no 'different' pair is possible", file=self.name or None)

    def training_pairs(self, per_class: int = 4, negatives: int = 1, *, rounds: int = 1, seed: int = 0
                       ) -> PairDataset:
        """Pairs for training, laid out as **m-per-class groups**.

        Each identity's images are shuffled and cut into groups of ``per_class``; a group's first image is paired
        with the others ("same") and with ``negatives`` images of other identities ("different"), and its anchor
        is also paired with the next group's anchor so that all images of an identity stay one entity. The trainer
        keeps a left record's pairs together, so every batch holds ``per_class`` images of several identities --
        what batch-hard and in-batch-negative losses need. ``rounds`` repeats this with new shuffles.
        """
        self._require_positive_pairs()
        if per_class < 2:
            raise TwinnetError(f"per_class must be at least 2, got {per_class}")
        rng = np.random.default_rng(seed)
        names = self.identity_names
        left: list[str] = []
        right: list[str] = []
        labels: list[int] = []
        for _ in range(rounds):
            for identity in names:
                rows = list(self._index[identity])
                if len(rows) < 2:
                    continue
                rows = [rows[i] for i in rng.permutation(len(rows))]
                groups = [rows[i: i + per_class] for i in range(0, len(rows), per_class)]
                if len(groups) > 1 and len(groups[-1]) == 1:  # no lone image: it joins the previous group
                    groups[-2].extend(groups.pop())
                others = [i for i, name in enumerate(self.identities) if name != identity]
                for g, group in enumerate(groups):
                    anchor = self.images[group[0]]
                    partners = [self.images[i] for i in group[1:]]
                    if len(groups) > 1:
                        partners.append(self.images[groups[(g + 1) % len(groups)][0]])
                    for partner in partners:
                        left.append(anchor)
                        right.append(partner)
                        labels.append(1)
                    for j in rng.choice(len(others), size=min(negatives, len(others)), replace=False):
                        left.append(anchor)
                        right.append(self.images[others[j]])
                        labels.append(0)
        return PairDataset(left, right, np.asarray(labels), list(left), list(right), name=self.name)

    def verification_pairs(self, *, negatives_per_positive: float = 1.0, max_positives: int | None = None,
                           exhaustive: bool = False, seed: int = 0) -> PairDataset:
        """Labelled pairs for validation and testing: every within-identity pair ("same", at most
        ``max_positives``, sampled), and "different" pairs sampled across identities --
        ``negatives_per_positive`` times as many, or every cross-identity pair with ``exhaustive``."""
        self._require_positive_pairs()
        rng = np.random.default_rng(seed)
        positives = [pair for rows in self._index.values() for pair in combinations(rows, 2)]
        if max_positives is not None and len(positives) > max_positives:
            positives = [positives[i] for i in np.sort(rng.choice(len(positives), max_positives, replace=False))]
        if exhaustive:
            negatives = [(i, j) for i, j in combinations(range(len(self.images)), 2)
                         if self.identities[i] != self.identities[j]]
        else:
            wanted = int(round(negatives_per_positive * len(positives)))
            chosen: set[tuple[int, int]] = set()
            n = len(self.images)
            possible = n * (n - 1) // 2 - len([p for rows in self._index.values() for p in combinations(rows, 2)])
            wanted = min(wanted, possible)
            while len(chosen) < wanted:
                i, j = (int(x) for x in rng.integers(0, n, size=2))
                if i != j and self.identities[i] != self.identities[j]:
                    chosen.add((min(i, j), max(i, j)))
            negatives = sorted(chosen)
        pairs = [(i, j, 1) for i, j in positives] + [(i, j, 0) for i, j in negatives]
        left = [self.images[i] for i, _, _ in pairs]
        right = [self.images[j] for _, j, _ in pairs]
        return PairDataset(left, right, np.asarray([y for _, _, y in pairs]), list(left), list(right),
                           name=self.name)

    def triplets(self, per_image: int = 1, *, seed: int = 0) -> list[tuple[str, str, str]]:
        """(anchor, positive, negative) references: for each image with a same-identity partner, ``per_image``
        triplets with a random positive and a random negative."""
        self._require_positive_pairs()
        rng = np.random.default_rng(seed)
        out = []
        for i, identity in enumerate(self.identities):
            mates = [j for j in self._index[identity] if j != i]
            if not mates:
                continue
            others = [j for j, name in enumerate(self.identities) if name != identity]
            for _ in range(per_image):
                out.append((self.images[i], self.images[mates[int(rng.integers(len(mates)))]],
                            self.images[others[int(rng.integers(len(others)))]]))
        return out


def triplets_to_pairs(triplets: Sequence[tuple[str, str, str]], name: str = "") -> PairDataset:
    """Each (anchor, positive, negative) becomes a "same" and a "different" pair sharing the anchor."""
    left, right, labels = [], [], []
    for anchor, positive, negative in triplets:
        left += [anchor, anchor]
        right += [positive, negative]
        labels += [1, 0]
    return PairDataset(left, right, np.asarray(labels), list(left), list(right), name=name)


def read_image_folder(root: str | os.PathLike[str]) -> ImageCollection:
    """Images in the layout ``root/<identity>/<image>`` -- a folder, a ``.zip`` read in place, or
    ``archive.zip::inner/folder``. An identity is the image's parent folder relative to ``root`` (so nested
    identities such as Omniglot's ``Alphabet/characterNN`` work); a zip whose entries all sit in one top folder
    uses that folder as the root. Non-image files (README, .txt) are ignored; images in a format we do not read
    (GIF, BMP, TIFF, WebP) and images directly under the root (no identity folder) are errors naming the file."""
    text = os.fspath(root)
    container, _, prefix = text.partition(MEMBER)
    entries: list[tuple[str, str]] = []  # (reference, path relative to the root)
    if container.lower().endswith(".zip"):
        names = [n for n in _zip(container).namelist() if not n.endswith("/")]
        prefix = prefix.strip("/")
        if prefix:
            names = [n for n in names if n.startswith(prefix + "/")]
            strip = len(prefix) + 1
        else:
            tops = {n.split("/", 1)[0] for n in names}
            strip = len(next(iter(tops))) + 1 if len(tops) == 1 and all("/" in n for n in names) else 0
        entries = [(f"{container}{MEMBER}{n}", n[strip:]) for n in sorted(names)]
    else:
        folder = Path(text)
        if not folder.exists():
            raise TwinnetError("image folder not found", file=folder)
        if not folder.is_dir():
            raise TwinnetError("expected a folder (root/<identity>/<image>) or a .zip archive", file=folder)
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                entries.append((str(path), path.relative_to(folder).as_posix()))
    images, identities = [], []
    for ref, relative in entries:
        suffix = Path(relative).suffix.lower()
        if Path(relative).name.startswith(".") or "__MACOSX" in relative:
            continue
        if suffix in UNSUPPORTED_EXTENSIONS:
            raise TwinnetError(f"unsupported image format {suffix!r}; convert it to PNG, JPEG or PGM", file=ref)
        if suffix not in IMAGE_EXTENSIONS:
            continue
        if "/" not in relative:
            raise TwinnetError("image sits directly in the root; put each identity's images in their own folder "
                               "(root/<identity>/<image>)", file=ref)
        images.append(ref)
        identities.append(relative.rsplit("/", 1)[0])
    if not images:
        raise TwinnetError("no PNG/JPEG/PGM images found (expected root/<identity>/<image>)", file=text)
    return ImageCollection(images, identities, name=Path(container).name + (f"::{prefix}" if prefix else ""))


def merge_collections(*collections: ImageCollection, name: str = "") -> ImageCollection:
    """One collection from several; identities with the same name are the same identity, and an image whose
    identity and file name were already seen is dropped (Omniglot's two small background sets share their Greek
    and Latin images)."""
    images, identities, seen = [], [], set()
    for collection in collections:
        for ref, identity in zip(collection.images, collection.identities):
            key = (identity, ref.rsplit("/", 1)[-1])
            if key in seen:
                continue
            seen.add(key)
            images.append(ref)
            identities.append(identity)
    return ImageCollection(images, identities, name=name or "+".join(c.name for c in collections))


def read_idx_collection(images: str | os.PathLike[str], labels: str | os.PathLike[str], *,
                        keep: Iterable[int] | None = None) -> ImageCollection:
    """An IDX image file with its label file (MNIST) as a collection of ``images::index`` references;
    ``keep`` restricts it to some labels."""
    images, labels = os.fspath(images), os.fspath(labels)
    pixels, classes = read_idx(images), read_idx(labels)
    if pixels.ndim != 3 or classes.ndim != 1 or len(pixels) != len(classes):
        raise TwinnetError(f"IDX shapes do not match: images {pixels.shape}, labels {classes.shape}", file=labels)
    wanted = None if keep is None else {int(k) for k in keep}
    rows = [i for i, c in enumerate(classes.tolist()) if wanted is None or c in wanted]
    return ImageCollection([f"{images}{MEMBER}{i}" for i in rows], [str(int(classes[i])) for i in rows],
                           name=Path(images).name)


# --------------------------------------------------------------------------- pair / triplet lists
def _resolve(value: Any, base: Path, file: object, row: int, column: str) -> str:
    from twinnet.data.records import is_missing

    if is_missing(value) or not str(value).strip():
        raise TwinnetError("image path is empty", file=file, row=row, field=column)
    text = str(value).strip()
    container, sep, member = text.partition(MEMBER)
    path = Path(container).expanduser()
    if not path.is_absolute():
        path = base / path
    if not path.exists():
        raise TwinnetError(f"image {text!r} not found (relative paths are read from the list's folder)",
                           file=file, row=row, field=column)
    ref = f"{path}{sep}{member}"
    suffix = Path(member or container).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS and not (member and container.endswith(IDX_SUFFIXES)):
        raise TwinnetError(f"unsupported image format {suffix or '(no extension)'!r}; use PNG, JPEG or PGM",
                           file=file, row=row, field=column)
    return ref


def read_image_pairs(source: str | os.PathLike[str]) -> PairDataset:
    """A pair list (``left,right[,label]``) or triplet list (``anchor,positive,negative``) of image paths, as
    CSV/TSV/JSONL/Parquet. Relative paths are read from the list's own folder; ``zip::member`` references work."""
    from twinnet.data.readers import parse_label
    from twinnet.io import first_row, read_table

    path = Path(source)
    frame = read_table(path)
    columns = [str(c) for c in frame.columns]
    base = path.resolve().parent
    rows = frame.to_dict(orient="records")
    start = first_row(path)
    if {"anchor", "positive", "negative"} <= set(columns):
        triplets = [tuple(_resolve(rec[c], base, path, i + start, c) for c in ("anchor", "positive", "negative"))
                    for i, rec in enumerate(rows)]
        if not triplets:
            raise TwinnetError("no triplets in file", file=path)
        return triplets_to_pairs(triplets, name=str(path))
    if not {"left", "right"} <= set(columns):
        raise TwinnetError("an image list needs 'left' and 'right' columns (pairs) or 'anchor', 'positive', "
                           f"'negative' (triplets); columns found: {', '.join(columns) or 'none'}", file=path)
    left = [_resolve(rec["left"], base, path, i + start, "left") for i, rec in enumerate(rows)]
    right = [_resolve(rec["right"], base, path, i + start, "right") for i, rec in enumerate(rows)]
    if not left:
        raise TwinnetError("no pairs in file", file=path)
    labels = ([parse_label(rec["label"], file=path, row=i + start) for i, rec in enumerate(rows)]
              if "label" in columns else None)
    return PairDataset(left, right, None if labels is None else np.asarray(labels), list(left), list(right),
                       name=str(path))


def is_image_pair_file(path: str | os.PathLike[str]) -> bool:
    """Whether a pair/triplet table holds image paths (judged from its first row)."""
    from twinnet.io import read_table

    try:
        frame = read_table(path).head(1)
    except TwinnetError:
        return False
    for column in ("left", "anchor"):
        if column in frame.columns and len(frame):
            return is_image_ref(str(frame[column].iloc[0]).strip())
    return False


def is_image_collection(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an image folder or a zip archive (not a DeepMatcher folder or a table)."""
    text = os.fspath(path)
    container = text.partition(MEMBER)[0]
    if container.lower().endswith(".zip"):
        return Path(container).is_file()
    folder = Path(text)
    if not folder.is_dir() or (folder / "tableA.csv").exists() or (folder / "train.csv").exists():
        return False
    for dirpath, _, filenames in os.walk(folder):
        if any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in filenames):
            return True
    return False


def image_records(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """``(ids, references)`` of the images to embed: an image folder / zip (ids are the references), or a table
    with an ``image`` column (relative paths from the table's folder) and an optional ``id`` column."""
    if is_image_collection(path):
        images = read_image_folder(path).images
        return list(images), list(images)
    from twinnet.io import first_row, read_table

    file = Path(path)
    frame = read_table(file)
    if "image" not in frame.columns:
        raise TwinnetError(f"an image table needs an 'image' column (columns: {', '.join(map(str, frame.columns))})",
                           file=file)
    base = file.resolve().parent
    start = first_row(file)
    refs = [_resolve(v, base, file, i + start, "image") for i, v in enumerate(frame["image"].tolist())]
    ids = [str(v) for v in frame["id"].tolist()] if "id" in frame.columns else list(refs)
    return ids, refs


def thumbnail_png(item: Any, size: int = 96) -> bytes:
    """A small PNG of an image, for reports and model cards."""
    image = decode_image(item).convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pair_montage_png(left: Any, right: Any, size: int = 96, gap: int = 6) -> bytes:
    """The two images of a pair side by side on white, as PNG bytes."""
    from PIL import Image

    tiles = [Image.open(io.BytesIO(thumbnail_png(x, size))) for x in (left, right)]
    canvas = Image.new("RGB", (2 * size + gap, size), "white")
    for k, tile in enumerate(tiles):
        canvas.paste(tile, (k * (size + gap) + (size - tile.width) // 2, (size - tile.height) // 2))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
