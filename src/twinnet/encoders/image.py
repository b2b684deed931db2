"""Image encoder: a small convolutional network built from scratch, behind the same :class:`Encoder` interface.

Two architectures, chosen by name:

- ``koch`` -- the convolutional tower of Koch, Zemel and Salakhutdinov (2015, "Siamese Neural Networks for One-shot
  Image Recognition"): conv + ReLU + max-pool stages, flattened into a fully connected embedding. Batch
  normalisation after each convolution (not in the paper) makes it train in a few CPU epochs. Kernels are Koch's
  10/7/4/4 for inputs of 96 px and more, 3×3 for smaller ones.
- ``resnet`` -- a small residual CNN: a 3×3 stem, one stage of basic residual blocks per width (stride 2 between
  stages), global average pooling and a linear embedding.

``prepare`` decodes each image once into a fixed-size uint8 tensor (grey or RGB; the resize policy is described in
:mod:`twinnet.data.images`); ``collate`` stacks them, and -- only while the encoder is in training mode -- applies
seeded random affine distortions as in Koch (rotation, shear, scale, translation) plus brightness and contrast
jitter. Weights are saved as ``model.safetensors``; ``backbone_weights`` initialises the convolutional part from a
local safetensors file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from twinnet.data.images import RESIZE_POLICIES, load_image
from twinnet.encoders.base import Encoder, load_weights, save_weights
from twinnet.errors import TwinnetError

ARCHITECTURES = ("koch", "resnet")


@dataclass
class Augmentation:
    """Random distortions applied to training images (each drawn uniformly per image).

    rotation: ± degrees; shear: ± shear factor on each axis; scale: zoom range; translate: ± fraction of the image
    size; brightness: ± added to pixels in [0, 1]; contrast: factor in ``[1 - contrast, 1 + contrast]`` around the
    image mean; flip: the chance of a left-right mirror (faces and most objects stay the same identity when
    mirrored; handwriting and signatures do not, hence 0 by default); probability: the share of images that are
    distorted at all (Koch applies each part with 0.5).
    """

    rotation: float = 10.0
    shear: float = 0.3
    scale: tuple[float, float] = (0.8, 1.2)
    translate: float = 0.05
    brightness: float = 0.1
    contrast: float = 0.2
    flip: float = 0.0
    probability: float = 1.0

    def __post_init__(self) -> None:
        self.scale = (float(self.scale[0]), float(self.scale[1]))
        if not 0 < self.scale[0] <= self.scale[1]:
            raise TwinnetError(f"augmentation scale must be a range 0 < low <= high, got {self.scale}")
        if not 0 <= self.probability <= 1:
            raise TwinnetError(f"augmentation probability must be in [0, 1], got {self.probability}")
        if not 0 <= self.flip <= 1:
            raise TwinnetError(f"augmentation flip must be a probability in [0, 1], got {self.flip}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["scale"] = list(self.scale)
        return out


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    pair = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 8:
        raise TwinnetError(f"image_size must be one number or (height, width), each at least 8 px; got {size!r}")
    return pair  # type: ignore[return-value]


class _BasicBlock(nn.Module):
    """Two 3×3 convolutions with a shortcut (a 1×1 projection when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Sequential() if stride == 1 and c_in == c_out else
                         nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _koch_tower(channels: int, widths: Sequence[int], kernels: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = channels
    for i, (width, kernel) in enumerate(zip(widths, kernels)):
        layers += [nn.Conv2d(c_in, width, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        if i < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
        c_in = width
    layers.append(nn.Flatten())
    return nn.Sequential(*layers)


def _residual_net(channels: int, widths: Sequence[int], blocks: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                               nn.ReLU(inplace=True)]
    c_in = widths[0]
    for stage, width in enumerate(widths):
        for b in range(blocks):
            layers.append(_BasicBlock(c_in, width, stride=2 if stage > 0 and b == 0 else 1))
            c_in = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


class ImageEncoder(Encoder):
    """A CNN over images (see the module docstring).

    Parameters
    ----------
    architecture: ``koch`` or ``resnet``.
    image_size: pixels, one number (square) or ``(height, width)``; every image is resized to it.
    channels: 1 (greyscale) or 3 (RGB); images are converted on loading.
    embedding_dim: size of the output embedding.
    widths: channels per convolution (koch, default 64/128/128/256) or per residual stage (resnet, 32/64/128).
    kernel_sizes: koch only; default 10/7/4/4 at 96 px and above, else 3/3/3/3.
    blocks_per_stage: resnet only.
    resize: ``stretch`` or ``crop`` (see :mod:`twinnet.data.images`).
    invert: use ``1 - pixel`` (dark strokes on white paper become sparse bright strokes).
    augment: an :class:`Augmentation`, its dict, ``True`` for the defaults, or None/False for none.
    seed: seeds the weight initialisation and the augmentation stream.
    backbone_weights: a local ``.safetensors`` file whose tensors initialise the convolutional layers (names as in
        this encoder's ``backbone.*`` state dict, with or without the ``backbone.`` prefix; the embedding layer
        stays freshly initialised).
    """

    modality = "image"

    def __init__(self, architecture: str = "koch", image_size: int | Sequence[int] = 35, channels: int = 1,
                 embedding_dim: int = 128, *, widths: Sequence[int] | None = None,
                 kernel_sizes: Sequence[int] | None = None, blocks_per_stage: int = 1, resize: str = "stretch",
                 invert: bool = False, augment: Augmentation | dict[str, Any] | bool | None = None, seed: int = 0,
                 backbone_weights: str | Path | None = None) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise TwinnetError(f"image architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        if channels not in (1, 3):
            raise TwinnetError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
        if resize not in RESIZE_POLICIES:
            raise TwinnetError(f"resize must be one of {RESIZE_POLICIES}, got {resize!r}")
        if embedding_dim < 1:
            raise TwinnetError(f"embedding_dim must be positive, got {embedding_dim}")
        self.architecture = architecture
        self.image_size = _size_pair(image_size)
        self.channels = int(channels)
        self._embedding_dim = int(embedding_dim)
        self.resize = resize
        self.invert = bool(invert)
        self.seed = int(seed)
        self.blocks_per_stage = int(blocks_per_stage)
        if augment is True:
            augment = Augmentation()
        elif isinstance(augment, dict):
            augment = Augmentation(**augment)
        self.augment: Augmentation | None = augment or None
        self._generator = torch.Generator().manual_seed(self.seed)

        # the same settings and seed always start from the same weights, without touching the global RNG
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self._build(widths, kernel_sizes)
        self.initialised_from = str(backbone_weights) if backbone_weights else None
        if backbone_weights:
            self.load_backbone(backbone_weights)

    def _build(self, widths: Sequence[int] | None, kernel_sizes: Sequence[int] | None) -> None:
        if self.architecture == "koch":
            self.widths = list(widths or (64, 128, 128, 256))
            default_kernels = (10, 7, 4, 4) if min(self.image_size) >= 96 else (3, 3, 3, 3)
            self.kernel_sizes = list(kernel_sizes or default_kernels[: len(self.widths)])
            if len(self.kernel_sizes) != len(self.widths):
                raise TwinnetError(f"koch needs one kernel size per width: {self.widths} vs {self.kernel_sizes}")
            if min(self.image_size) < 2 ** (len(self.widths) - 1):
                raise TwinnetError(f"image_size {self.image_size} is too small for {len(self.widths)} pooling stages")
            self.backbone = _koch_tower(self.channels, self.widths, self.kernel_sizes)
        else:
            self.widths = list(widths or (32, 64, 128))
            self.kernel_sizes = []
            self.backbone = _residual_net(self.channels, self.widths, self.blocks_per_stage)
        self.head = nn.Linear(self._flat_features(), self._embedding_dim)

    def _flat_features(self) -> int:
        was_training = self.backbone.training
        self.backbone.eval()  # a dry run must not move the batch-norm running statistics
        with torch.no_grad():
            size = self.backbone(torch.zeros(1, self.channels, *self.image_size)).shape[1]
        self.backbone.train(was_training)
        return int(size)

    # ------------------------------------------------------------------ preprocessing
    def prepare(self, items: Sequence[Any]) -> list[torch.Tensor]:
        return [torch.from_numpy(load_image(item, self.image_size, self.channels, self.resize, where=f"item {i}"))
                for i, item in enumerate(items)]

    def collate(self, prepared: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        pixels = torch.stack(list(prepared)).float() / 255.0
        if self.invert:
            pixels = 1.0 - pixels
        if self.training and self.augment is not None:
            pixels = self._distort(pixels)
        return {"pixels": (pixels - 0.5) / 0.5}

    def _distort(self, pixels: torch.Tensor) -> torch.Tensor:
        """Seeded random affine distortion and brightness/contrast jitter of a batch of [0, 1] images."""
        aug, n, g = self.augment, pixels.shape[0], self._generator

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(n, generator=g)

        angle = uniform(-aug.rotation, aug.rotation) * math.pi / 180
        shear_x, shear_y = uniform(-aug.shear, aug.shear), uniform(-aug.shear, aug.shear)
        scale = uniform(*aug.scale)
        shift = torch.stack([uniform(-aug.translate, aug.translate), uniform(-aug.translate, aug.translate)], 1) * 2
        brightness = uniform(-aug.brightness, aug.brightness)
        contrast = uniform(1 - aug.contrast, 1 + aug.contrast)
        active = torch.rand(n, generator=g) < aug.probability
        # drawn only when used, so recipes without mirroring keep their exact random stream
        mirror = torch.rand(n, generator=g) < aug.flip if aug.flip > 0 else torch.zeros(n, dtype=torch.bool)

        cos, sin = torch.cos(angle), torch.sin(angle)
        rotation = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
        shear = torch.stack([torch.stack([torch.ones(n), shear_x], 1), torch.stack([shear_y, torch.ones(n)], 1)], 1)
        # affine_grid maps output coordinates to input coordinates, so dividing by the scale zooms in by it
        matrix = rotation @ shear / scale[:, None, None]
        # negating the x column reads each output column from the mirrored input column
        x_sign = torch.where(mirror, -1.0, 1.0)
        matrix = torch.cat([matrix[:, :, :1] * x_sign[:, None, None], matrix[:, :, 1:]], 2)
        matrix = torch.where(active[:, None, None], matrix, torch.eye(2).expand(n, 2, 2))
        shift = torch.where(active[:, None], shift, torch.zeros(n, 2))
        theta = torch.cat([matrix, shift[:, :, None]], 2).to(pixels)
        grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
        # "border" repeats the edge pixels, so the background (paper, wall) fills the uncovered corners
        out = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        jittered = (out - mean) * contrast.to(out)[:, None, None, None] + mean + brightness.to(out)[:, None, None, None]
        out = torch.where(active[:, None, None, None], jittered, out)
        return out.clamp(0.0, 1.0)

    def reseed(self, seed: int) -> None:
        """Restart the augmentation stream (the trainer's seed makes a run repeatable)."""
        self._generator.manual_seed(int(seed))

    # ------------------------------------------------------------------ forward
    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.backbone(features["pixels"]))

    @property
    def embedding_dim(self) -> int:
        return self._embedding_dim

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        return {"type": "image", "architecture": self.architecture, "image_size": list(self.image_size),
                "channels": self.channels, "embedding_dim": self._embedding_dim, "widths": self.widths,
                "kernel_sizes": self.kernel_sizes, "blocks_per_stage": self.blocks_per_stage,
                "resize": self.resize, "invert": self.invert,
                "augment": self.augment.to_dict() if self.augment else None, "seed": self.seed,
                "initialised_from": self.initialised_from}

    def save(self, folder: Path) -> None:
        save_weights(self, folder, "image")

    @classmethod
    def load(cls, folder: Path, config: dict[str, Any]) -> ImageEncoder:
        settings = {k: config[k] for k in ("architecture", "image_size", "channels", "embedding_dim", "widths",
                                           "kernel_sizes", "blocks_per_stage", "resize", "invert", "augment",
                                           "seed") if k in config}
        encoder = cls(**settings)
        encoder.initialised_from = config.get("initialised_from")
        load_weights(encoder, folder, "image")
        return encoder

    def load_backbone(self, path: str | Path) -> list[str]:
        """Copy the convolutional weights of a safetensors file into this encoder; returns the names loaded.

        Every tensor of the backbone must be present with the same shape, so a file from another architecture or
        size fails here with the first mismatch named, instead of training from a half-initialised network."""
        from safetensors.torch import load_file

        file = Path(path)
        if file.suffix != ".safetensors":
            raise TwinnetError("backbone weights must be a .safetensors file (pickled checkpoints are not loaded)",
                               file=file)
        try:
            tensors = load_file(str(file))
        except FileNotFoundError:
            raise TwinnetError("backbone weights file not found", file=file) from None
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for bad files
            raise TwinnetError(f"not a readable safetensors file ({exc})", file=file) from None
        tensors = {k.removeprefix("backbone."): v for k, v in tensors.items() if not k.startswith("head.")}
        own = self.backbone.state_dict()
        for name, tensor in own.items():
            if name not in tensors:
                raise TwinnetError(f"no tensor 'backbone.{name}' for the {self.architecture} backbone", file=file)
            if tuple(tensors[name].shape) != tuple(tensor.shape):
                raise TwinnetError(f"tensor 'backbone.{name}' has shape {tuple(tensors[name].shape)}, the encoder "
                                   f"needs {tuple(tensor.shape)}", file=file)
        self.backbone.load_state_dict({k: tensors[k] for k in own}, strict=True)
        return sorted(own)
