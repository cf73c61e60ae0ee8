"""DeepLabV3+ as NVIDIA's semantic-segmentation code defines it (Zhu et al., "Improving Semantic Segmentation via
Video Propagation and Label Relaxation", CVPR 2019), the Cityscapes model RPL, PEBAL and DiffEEL start from.

Module names match those checkpoints' keys after their prefixes are stripped: ``mod1.conv1.weight``,
``mod2.block1.convs.bn2.0.running_mean``, ``aspp.features.1.0.weight``, ``bot_fine.weight``, ``final.6.weight``.
Two trunks: WideResNet38-A2 (``DeepWV3Plus``) and a dilated ResNet-50/101 (``DeepR50V3PlusD`` /
``DeepR101V3PlusD``: ``layer0`` = conv/bn/relu/maxpool, torchvision bottlenecks, layers 3-4 dilated 2 and 4).
Both run at output stride 8; the decoder fuses a stride-2 (WRN) or stride-4 (ResNet) feature.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


def _up(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _bn_relu(c: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: image pooling, 1×1, and three 3×3 with rates (6, 12, 18) × (16 / stride);
    outputs concatenated in that order (5 × ``dim`` channels)."""

    def __init__(self, cin: int, dim: int = 256, output_stride: int = 8, rates=(6, 12, 18)):
        super().__init__()
        rates = [r * 16 // output_stride for r in rates]
        self.features = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(cin, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))]
            + [
                nn.Sequential(
                    nn.Conv2d(cin, dim, 3, padding=r, dilation=r, bias=False),
                    nn.BatchNorm2d(dim),
                    nn.ReLU(inplace=True),
                )
                for r in rates
            ]
        )
        self.img_pooling = nn.AdaptiveAvgPool2d(1)
        self.img_conv = nn.Sequential(nn.Conv2d(cin, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = [_up(self.img_conv(self.img_pooling(x)), x.shape[2:])]
        out += [f(x) for f in self.features]
        return torch.cat(out, 1)


# ---- the shared V3+ decoder ------------------------------------------------------------------------------------


class DeepLabV3Plus(nn.Module):
    """The decoder both trunks share: ASPP on the deep feature, 1×1 bottlenecks, concatenation with the fine
    feature (256 + 48 = 304 channels: the classifier's input) and the 3-conv ``final`` classifier."""

    fine_channels: int
    deep_channels: int

    def _add_head(self, num_classes: int) -> None:
        self.aspp = ASPP(self.deep_channels, 256, output_stride=8)
        self.bot_fine = nn.Conv2d(self.fine_channels, 48, 1, bias=False)
        self.bot_aspp = nn.Conv2d(1280, 256, 1, bias=False)
        self.final = nn.Sequential(
            nn.Conv2d(256 + 48, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, num_classes, 1, bias=False),
        )

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(deep trunk feature, classifier input = [bot_fine(fine), upsampled bot_aspp(aspp(deep))])."""
        fine, deep = self.trunk(x)
        up = _up(self.bot_aspp(self.aspp(deep)), fine.shape[2:])
        return deep, torch.cat([self.bot_fine(fine), up], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, plug = self.encode(x)
        return _up(self.final(plug), x.shape[2:])


# ---- WideResNet38-A2 -------------------------------------------------------------------------------------------


class IdentityResidualBlock(nn.Module):
    """Pre-activation block: BN-ReLU, then two 3×3 convs (or 1×1-3×3-1×1 bottleneck); a 1×1 projection of the
    activated input as shortcut when shape changes."""

    def __init__(self, cin: int, channels: tuple[int, ...], stride: int = 1, dilation: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = _bn_relu(cin)
        if len(channels) == 2:
            layers = [
                ("conv1", nn.Conv2d(cin, channels[0], 3, stride, dilation, dilation=dilation, bias=False)),
                ("bn2", _bn_relu(channels[0])),
                ("conv2", nn.Conv2d(channels[0], channels[1], 3, 1, dilation, dilation=dilation, bias=False)),
            ]
        else:
            layers = [
                ("conv1", nn.Conv2d(cin, channels[0], 1, stride, bias=False)),
                ("bn2", _bn_relu(channels[0])),
                ("conv2", nn.Conv2d(channels[0], channels[1], 3, 1, dilation, dilation=dilation, bias=False)),
                ("bn3", _bn_relu(channels[1])),
                ("conv3", nn.Conv2d(channels[1], channels[2], 1, bias=False)),
            ]
        if dropout:
            layers.insert(len(layers) - 1, ("dropout", nn.Dropout2d(dropout)))
        self.convs = nn.Sequential(OrderedDict(layers))
        if stride != 1 or cin != channels[-1]:
            self.proj_conv = nn.Conv2d(cin, channels[-1], 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.bn1(x)
        shortcut = self.proj_conv(act) if hasattr(self, "proj_conv") else x
        return self.convs(act) + shortcut


WRN38_STRUCTURE = (3, 3, 6, 3, 1, 1)
WRN38_CHANNELS = ((128, 128), (256, 256), (512, 512), (512, 1024), (512, 1024, 2048), (1024, 2048, 4096))


class DeepWV3Plus(DeepLabV3Plus):
    """DeepLabV3+ on WideResNet38-A2 with dilation (mod5 rate 2, mod6-7 rate 4; output stride 8)."""

    fine_channels = 128
    deep_channels = 4096

    def __init__(self, num_classes: int = 19):
        super().__init__()
        self.mod1 = nn.Sequential(OrderedDict([("conv1", nn.Conv2d(3, 64, 3, 1, 1, bias=False))]))
        cin = 64
        for mod_id, (num, channels) in enumerate(zip(WRN38_STRUCTURE, WRN38_CHANNELS, strict=True)):
            dilation = 2 if mod_id == 3 else 4 if mod_id > 3 else 1
            dropout = {4: 0.3, 5: 0.5}.get(mod_id, 0.0)
            blocks = []
            for b in range(num):
                stride = 2 if b == 0 and mod_id == 2 else 1
                blocks.append((f"block{b + 1}", IdentityResidualBlock(cin, channels, stride, dilation, dropout)))
                cin = channels[-1]
            if mod_id < 2:
                self.add_module(f"pool{mod_id + 2}", nn.MaxPool2d(3, stride=2, padding=1))
            self.add_module(f"mod{mod_id + 2}", nn.Sequential(OrderedDict(blocks)))
        self._add_head(num_classes)

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fine feature at stride 2, deep feature at stride 8)."""
        x = self.mod1(x)
        fine = self.mod2(self.pool2(x))
        x = self.mod3(self.pool3(fine))
        for mod in (self.mod4, self.mod5, self.mod6, self.mod7):
            x = mod(x)
        return fine, x


# ---- dilated ResNet ---------------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1, downsample: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        if downsample:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.downsample(x) if hasattr(self, "downsample") else x
        return self.relu(out + shortcut)


RESNET_LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class DeepResNetV3PlusD(DeepLabV3Plus):
    """DeepLabV3+ on a ResNet-50/101 whose layers 3 and 4 trade stride for dilation 2 and 4 (output stride 8)."""

    fine_channels = 256
    deep_channels = 2048

    def __init__(self, depth: int = 101, num_classes: int = 19):
        super().__init__()
        if depth not in RESNET_LAYERS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYERS)}, got {depth}")
        self.layer0 = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        cin = 64
        for i, (n, planes) in enumerate(zip(RESNET_LAYERS[depth], (64, 128, 256, 512), strict=True)):
            stride = 2 if i == 1 else 1
            dilation = {2: 2, 3: 4}.get(i, 1)
            blocks = [Bottleneck(cin, planes, stride, dilation, downsample=True)]
            cin = planes * 4
            blocks += [Bottleneck(cin, planes, 1, dilation) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self._add_head(num_classes)

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fine feature at stride 4, deep feature at stride 8)."""
        fine = self.layer1(self.layer0(x))
        return fine, self.layer4(self.layer3(self.layer2(fine)))
