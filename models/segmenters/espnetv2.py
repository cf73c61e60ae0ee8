"""ESPNetv2 for semantic segmentation (Mehta et al., "ESPNetv2: A Light-weight, Power Efficient, and General
Purpose CNN", CVPR 2019), written to load the Cityscapes checkpoints of github.com/sacmehta/EdgeNets strictly.

Module names follow the checkpoint's keys (``base_net.level2_0.eesp.proj_1x1.conv.weight``,
``bu_dec_l1.merge_layer.2.cbr.0.weight``, ...). The reference code has two conv-BN-PReLU helpers with different
attribute names (``conv/bn/act`` in the encoder, ``cbr.0/1/2`` in the decoder); both are kept so keys match.

Architecture (s = 2.0): encoder EESPNet without level 5, channels [32, 128, 256, 512], EESP blocks with 4
branches and receptive-field limits [13, 11, 9, 7], input reinforcement; a bottom-up decoder of Efficient
Pyramid Pooling blocks fused with encoder features, bilinear ×2 steps (align_corners=True) and a final resize.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# s -> encoder channels per level (level1 .. level5, head); only levels 1-4 are used for segmentation
CHANNELS = {
    0.5: [16, 32, 64, 128, 256, 1024],
    1.0: [32, 64, 128, 256, 512, 1024],
    1.25: [32, 80, 160, 320, 640, 1024],
    1.5: [32, 96, 192, 384, 768, 1024],
    2.0: [32, 128, 256, 512, 1024, 1280],
}
REPEATS = [0, 3, 7, 3]
RECEPTIVE_LIMITS = [13, 11, 9, 7, 5]
BRANCHES = 4
REINFORCEMENT_CHANNELS = 3  # the RGB input, pooled down to each level


class ConvBNAct(nn.Module):
    """Conv → BN → PReLU (encoder naming: ``conv``, ``bn``, ``act``)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(cout)
        if act:
            self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.act(x) if hasattr(self, "act") else x


class BNAct(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.PReLU(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class DilatedConv(nn.Module):
    def __init__(self, c: int, stride: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride, dilation, dilation=dilation, groups=c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class EESP(nn.Module):
    """Reduce (grouped 1×1) → split into k depth-wise dilated 3×3 branches → hierarchical feature fusion
    (each branch adds the previous one) → merge (grouped 1×1) → residual (when shapes agree) → PReLU.
    With ``downsample`` (stride 2) it returns the merged map before the residual and activation."""

    def __init__(self, cin: int, cout: int, stride: int = 1, k: int = 4, r_lim: int = 7, downsample: bool = False):
        super().__init__()
        n = cout // k
        if n * k != cout:
            raise ValueError(f"EESP: {cout} output channels do not split into {k} branches")
        self.stride = stride
        self.downsample = downsample
        self.proj_1x1 = ConvBNAct(cin, n, 1, groups=k)
        kernel_sizes = sorted(3 + 2 * i if 3 + 2 * i <= r_lim else 3 for i in range(k))
        # a 3×3 kernel with dilation d covers (2d + 1)×(2d + 1)
        self.spp_dw = nn.ModuleList(DilatedConv(n, stride, (ks - 1) // 2) for ks in kernel_sizes)
        self.conv_1x1_exp = ConvBNAct(cout, cout, 1, groups=k, act=False)
        self.br_after_cat = BNAct(cout)
        self.module_act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.proj_1x1(x)
        branches = [self.spp_dw[0](reduced)]
        for conv in self.spp_dw[1:]:
            branches.append(conv(reduced) + branches[-1])
        out = self.conv_1x1_exp(self.br_after_cat(torch.cat(branches, 1)))
        if self.downsample:
            return out
        if out.shape == x.shape:
            out = out + x
        return self.module_act(out)


class DownSampler(nn.Module):
    """Stride-2 EESP concatenated with a 3×3 average pool of the input, plus the RGB image pooled to the same
    size (input reinforcement), then PReLU."""

    def __init__(self, cin: int, cout: int, k: int, r_lim: int, reinforce: bool = True):
        super().__init__()
        self.eesp = EESP(cin, cout - cin, stride=2, k=k, r_lim=r_lim, downsample=True)
        self.avg = nn.AvgPool2d(3, stride=2, padding=1)
        if reinforce:
            self.inp_reinf = nn.Sequential(
                ConvBNAct(REINFORCEMENT_CHANNELS, REINFORCEMENT_CHANNELS, 3),
                ConvBNAct(REINFORCEMENT_CHANNELS, cout, 1, act=False),
            )
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.avg(x)
        out = torch.cat([pooled, self.eesp(x)], 1)
        if image is not None and hasattr(self, "inp_reinf"):
            # the reference halves the image until its height matches (a while loop); same result
            while image.shape[2] != pooled.shape[2]:
                image = F.avg_pool2d(image, 3, stride=2, padding=1)
            out = out + self.inp_reinf(image)
        return self.act(out)


class EESPNetEncoder(nn.Module):
    """EESPNet levels 1-4 (the classification head and level 5 are not part of the segmentation model)."""

    def __init__(self, s: float = 2.0):
        super().__init__()
        ch = CHANNELS[s]
        self.level1 = ConvBNAct(3, ch[0], 3, stride=2)
        self.level2_0 = DownSampler(ch[0], ch[1], BRANCHES, RECEPTIVE_LIMITS[0])
        self.level3_0 = DownSampler(ch[1], ch[2], BRANCHES, RECEPTIVE_LIMITS[1])
        self.level3 = nn.ModuleList(
            EESP(ch[2], ch[2], k=BRANCHES, r_lim=RECEPTIVE_LIMITS[2]) for _ in range(REPEATS[1])
        )
        self.level4_0 = DownSampler(ch[2], ch[3], BRANCHES, RECEPTIVE_LIMITS[2])
        self.level4 = nn.ModuleList(
            EESP(ch[3], ch[3], k=BRANCHES, r_lim=RECEPTIVE_LIMITS[3]) for _ in range(REPEATS[2])
        )
        self.channels = ch[:4]

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Features at strides 2, 4, 8, 16."""
        l1 = self.level1(image)
        l2 = self.level2_0(l1, image)
        l3 = self.level3_0(l2, image)
        for block in self.level3:
            l3 = block(l3)
        l4 = self.level4_0(l3, image)
        for block in self.level4:
            l4 = block(l4)
        return [l1, l2, l3, l4]


# ---- decoder (reference naming: nn.Sequential indices) ------------------------------------------------------------


class SeqCBR(nn.Module):
    """Conv → BN → PReLU as ``cbr.0/1/2``."""

    def __init__(self, cin: int, cout: int, k: int, groups: int = 1):
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(cin, cout, k, 1, (k - 1) // 2, bias=False, groups=groups), nn.BatchNorm2d(cout), nn.PReLU(cout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbr(x)


class SeqBR(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(c), nn.PReLU(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.br(x)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class EfficientPyramidPool(nn.Module):
    """Project to a few channels, run one depth-wise 3×3 at scales 2, 1.5, 1, 0.5, 0.1 of the map (at least 5
    pixels a side), bring each back to the map's size, shuffle, merge with a grouped 3×3 and a 1×1."""

    SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)

    def __init__(self, cin: int, proj: int, cout: int, last_layer_br: bool = True):
        super().__init__()
        n = len(self.SCALES)
        self.projection_layer = SeqCBR(cin, proj, 1)
        self.stages = nn.ModuleList(nn.Conv2d(proj, proj, 3, 1, 1, bias=False, groups=proj) for _ in range(n))
        self.merge_layer = nn.Sequential(
            SeqBR(proj * n),
            ChannelShuffle(n),
            SeqCBR(proj * n, proj, 3, groups=proj),
            nn.Conv2d(proj, cout, 1, bias=not last_layer_br),
        )
        if last_layer_br:
            self.br = SeqBR(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection_layer(x)
        h, w = x.shape[2:]
        outs = []
        for scale, stage in zip(self.SCALES, self.stages, strict=True):
            hs, ws = max(math.ceil(h * scale), 5), max(math.ceil(w * scale), 5)
            if scale < 1.0:
                y = stage(F.adaptive_avg_pool2d(x, (hs, ws)))
                y = F.interpolate(y, (h, w), mode="bilinear", align_corners=True)
            elif scale > 1.0:
                y = stage(F.interpolate(x, (hs, ws), mode="bilinear", align_corners=True))
                y = F.adaptive_avg_pool2d(y, (h, w))
            else:
                y = stage(x)
            outs.append(y)
        out = self.merge_layer(torch.cat(outs, 1))
        return self.br(out) if hasattr(self, "br") else out


class EfficientPWConv(nn.Module):
    """Grouped 3×3 expansion gated by a channel-wise sigmoid of the globally pooled input."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.wt_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.Sigmoid())
        self.expansion_layer = SeqCBR(cin, cout, 3, groups=math.gcd(cin, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class ESPNetv2Segmentation(nn.Module):
    """The full network; ``encode`` and ``decode`` are split so a residual can be added to the deepest
    encoder feature (stride 16) and the frozen decoder run again on it."""

    def __init__(self, num_outputs: int = 20, s: float = 2.0, base_decoder_planes: int = 16):
        super().__init__()
        self.base_net = EESPNetEncoder(s)
        enc = self.base_net.channels
        dec = [4 * base_decoder_planes, 3 * base_decoder_planes, 2 * base_decoder_planes, num_outputs]
        proj = min(num_outputs // 2, base_decoder_planes)
        self.bu_dec_l1 = EfficientPyramidPool(enc[3], proj, dec[0])
        self.bu_dec_l2 = EfficientPyramidPool(dec[0], proj, dec[1])
        self.bu_dec_l3 = EfficientPyramidPool(dec[1], proj, dec[2])
        self.bu_dec_l4 = EfficientPyramidPool(dec[2], proj, dec[3], last_layer_br=False)
        self.merge_enc_dec_l2 = EfficientPWConv(enc[2], dec[0])
        self.merge_enc_dec_l3 = EfficientPWConv(enc[1], dec[1])
        self.merge_enc_dec_l4 = EfficientPWConv(enc[0], dec[2])
        self.bu_br_l2 = nn.Sequential(nn.BatchNorm2d(dec[0]), nn.PReLU(dec[0]))
        self.bu_br_l3 = nn.Sequential(nn.BatchNorm2d(dec[1]), nn.PReLU(dec[1]))
        self.bu_br_l4 = nn.Sequential(nn.BatchNorm2d(dec[2]), nn.PReLU(dec[2]))
        self.deep_channels = enc[3]
        self.plug_channels = dec[2]

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.base_net(image)

    def decode_to_plug(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Everything up to the input of the last pyramid block (the classifier): 2·base channels, stride 2."""
        l1, l2, l3, l4 = feats
        x = _up2(self.bu_dec_l1(l4))
        x = self.bu_dec_l2(self.bu_br_l2(self.merge_enc_dec_l2(l3) + x))
        x = _up2(x)
        x = self.bu_dec_l3(self.bu_br_l3(self.merge_enc_dec_l3(l2) + x))
        x = _up2(x)
        return self.bu_br_l4(self.merge_enc_dec_l4(l1) + x)

    def classify(self, plug: torch.Tensor) -> torch.Tensor:
        return self.bu_dec_l4(plug)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.classify(self.decode_to_plug(self.encode(image)))
        return F.interpolate(logits, size=image.shape[2:], mode="bilinear", align_corners=True)
