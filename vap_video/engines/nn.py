"""Building blocks of the detector: convolutions, CSP blocks, SPPF, a light attention block.

Written clean-room from the YOLOv8 / YOLOv10 / YOLO26 papers and public docs. Every block that
carries a BatchNorm can be folded for inference (``fuse()``), and :class:`RepConv` collapses its
3x3 + 1x1 (+ identity) branches into a single 3x3 convolution, so the exported graph is a plain
chain of convolutions with no training-only structure left in it.

This module imports torch at module level: it belongs to the training/export side only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def autopad(k: int, d: int = 1) -> int:
    """'Same' padding for an odd kernel ``k`` with dilation ``d`` (keeps H/W at stride 1)."""
    return d * (k - 1) // 2


def _pair(t: tuple[int, ...]) -> tuple[int, int]:
    """A Conv2d's (h, w) attribute as the 2-tuple its constructor is typed for."""
    return t[0], t[1]


def _running_stats(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, var) of a BatchNorm; one built with track_running_stats=False has none to fold."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    return bn.running_mean, bn.running_var


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    """The bias of a conv that has one (a fused conv always does)."""
    if conv.bias is None:
        raise ValueError("expected a convolution with a bias (a fused one)")
    return conv.bias.data


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Fold an eval-mode BatchNorm into the preceding convolution.

    BN in eval is an affine per-channel map y = g*(x-mu)/sqrt(var+eps) + b, so it can be merged
    into the conv weights and a bias: one fewer op per layer at inference and identical output.
    """
    padding = conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, _pair(conv.kernel_size), _pair(conv.stride), padding,
        _pair(conv.dilation), conv.groups, bias=True,
    ).to(conv.weight.device)
    mean, var = _running_stats(bn)
    std = torch.sqrt(var + bn.eps)
    scale = bn.weight / std
    fused.weight.data.copy_(conv.weight.data * scale.reshape(-1, 1, 1, 1))
    conv_bias = conv.bias.data if conv.bias is not None else torch.zeros_like(mean)
    _bias(fused).copy_((conv_bias - mean) * scale + bn.bias)
    fused.requires_grad_(False)
    return fused


class Conv(nn.Module):
    """Conv2d -> BatchNorm -> SiLU, the unit every other block is made of."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1, d: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, d), dilation=d, groups=g, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act: nn.Module = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def fuse(self) -> None:
        """Fold BN into the conv weights (eval only); the BN becomes an identity."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_bn(self.conv, self.bn)
            self.bn = nn.Identity()


class DWConv(Conv):
    """Depth-wise convolution (groups = channels): cheap spatial mixing for the class branch."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, act: bool = True):
        super().__init__(c1, c2, k, s, g=_gcd(c1, c2), act=act)


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


class RepConv(nn.Module):
    """3x3 conv + parallel 1x1 conv (+ identity BN when shapes allow), each with its own BN.

    Training sees a multi-branch block (better optimisation, as in RepVGG); :meth:`fuse` folds
    all branches into one 3x3 conv with bias, which is mathematically identical in eval mode.
    """

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, g: int = 1, act: bool = True):
        super().__init__()
        assert k == 3, "RepConv is defined for 3x3 kernels"
        self.c1, self.c2, self.s, self.g = c1, c2, s, g
        self.conv3 = Conv(c1, c2, 3, s, g=g, act=False)
        self.conv1 = Conv(c1, c2, 1, s, g=g, act=False)
        self.idbn: nn.BatchNorm2d | None = (
            nn.BatchNorm2d(c1, eps=1e-3, momentum=0.03) if (c1 == c2 and s == 1) else None
        )
        self.act: nn.Module = nn.SiLU() if act else nn.Identity()
        self.fused: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        y = self.conv3(x) + self.conv1(x)
        if self.idbn is not None:
            y = y + self.idbn(x)
        return self.act(y)

    def _equivalent(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernel and bias of the single 3x3 conv equal to the sum of all branches."""
        self.conv3.fuse()
        self.conv1.fuse()
        k3, b3 = self.conv3.conv.weight.data, _bias(self.conv3.conv)
        k1 = F.pad(self.conv1.conv.weight.data, [1, 1, 1, 1])
        b1 = _bias(self.conv1.conv)
        kernel, bias = k3 + k1, b3 + b1
        if self.idbn is not None:
            cin_g = self.c1 // self.g
            ident = torch.zeros_like(k3)
            for i in range(self.c1):
                ident[i, i % cin_g, 1, 1] = 1.0
            mean, var = _running_stats(self.idbn)
            std = torch.sqrt(var + self.idbn.eps)
            scale = self.idbn.weight / std
            kernel = kernel + ident * scale.reshape(-1, 1, 1, 1)
            bias = bias + self.idbn.bias - mean * scale
        return kernel, bias

    def fuse(self) -> None:
        """Re-parameterise into one 3x3 conv; drops the training branches."""
        if self.fused is not None:
            return
        kernel, bias = self._equivalent()
        conv = nn.Conv2d(self.c1, self.c2, 3, self.s, 1, groups=self.g, bias=True).to(kernel.device)
        conv.weight.data.copy_(kernel)
        _bias(conv).copy_(bias)
        conv.requires_grad_(False)
        self.fused = conv
        del self.conv3, self.conv1
        self.idbn = None


class Bottleneck(nn.Module):
    """Two convs with an optional residual; ``rep`` makes the first one a RepConv."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 1.0, rep: bool = False):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1: nn.Module = RepConv(c1, c_) if rep else Conv(c1, c_, 3)
        self.cv2 = Conv(c_, c2, 3)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3k(nn.Module):
    """CSP block with ``n`` bottlenecks on half the channels (the inner unit of C3k2)."""

    def __init__(self, c1: int, c2: int, n: int = 2, shortcut: bool = True, rep: bool = False):
        super().__init__()
        c_ = c2 // 2
        self.cv1 = Conv(c1, c_, 1)
        self.cv2 = Conv(c1, c_, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, rep=rep) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C2f(nn.Module):
    """CSP block with a split and dense concatenation of every inner block's output.

    The input is projected and split in two halves; one half passes through ``n`` inner blocks and
    every intermediate result is concatenated (rich gradient paths at low cost). With ``c3k`` the
    inner blocks are :class:`C3k` (the C3k2 flavour used at larger scales), otherwise bottlenecks.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, e: float = 0.5,
                 c3k: bool = False, rep: bool = False):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(
            C3k(self.c, self.c, 2, shortcut, rep=rep) if c3k else Bottleneck(self.c, self.c, shortcut, rep=rep)
            for _ in range(n)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 max-pools give 5/9/13 receptive fields."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1)
        self.cv2 = Conv(c_ * 4, c2, 1)
        self.pool = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv2(torch.cat(y, 1))


class Attention(nn.Module):
    """Multi-head self-attention over all positions of a (small) feature map.

    Used only at stride 32 where H*W is small (100 positions at 320 px), so the quadratic cost
    is negligible; a depth-wise conv on V adds positional information without embeddings.
    """

    def __init__(self, dim: int, num_heads: int = 1, attn_ratio: float = 0.5):
        super().__init__()
        self.num_heads = max(1, num_heads)
        self.head_dim = dim // self.num_heads
        self.key_dim = max(1, int(self.head_dim * attn_ratio))
        self.scale = self.key_dim ** -0.5
        h = dim + self.key_dim * self.num_heads * 2
        self.qkv = Conv(dim, h, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, g=dim, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = h * w
        qkv = self.qkv(x).view(b, self.num_heads, self.key_dim * 2 + self.head_dim, n)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = (q.transpose(-2, -1) @ k) * self.scale
        attn = attn.softmax(dim=-1)
        out = (v @ attn.transpose(-2, -1)).view(b, c, h, w) + self.pe(v.reshape(b, c, h, w))
        return self.proj(out)


class PSA(nn.Module):
    """Partial self-attention: attention + FFN on half the channels, the other half bypasses.

    Gives the lowest-resolution features global context at a fraction of full attention's cost.
    """

    def __init__(self, c1: int, c2: int, e: float = 0.5):
        super().__init__()
        assert c1 == c2, "PSA keeps the channel count"
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        self.attn = Attention(self.c, num_heads=max(1, self.c // 64), attn_ratio=0.5)
        self.ffn = nn.Sequential(Conv(self.c, self.c * 2, 1), Conv(self.c * 2, self.c, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        b = b + self.attn(b)
        b = b + self.ffn(b)
        return self.cv2(torch.cat((a, b), 1))
