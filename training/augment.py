"""Batch augmentation of 6-channel pair images against the satellite / season domain gap.

Applied to each training batch after ultralytics' own augmentation (mosaic, flips, scale),
on the training device (``torch``, vectorised over the batch; a fresh draw per image per
step), so one dataset serves every round and the CPU data loaders stay as fast as before.
Geometry is never changed, so labels stay valid.

- **resolution**, both epochs alike (one loss of detail for the whole pair): downsample by a
  random factor (default 1–2.5, area average) and upsample back (bilinear or bicubic), then
  optionally a Gaussian blur — what the runtime sees when it upsamples 0.5 m satellite
  imagery to the model's 0.25 m.
- **season / atmosphere**, each epoch on its own: vegetation shifted green→brown/straw or
  bare/dry ground shifted →green, then gamma, per-channel gain, contrast and haze (a blend
  toward a bright, slightly blue veil); stronger than :func:`training.copypaste.photometric`.

Input and output: float tensors (B, 6, H, W) in 0..1, channels (baseline R, G, B, current R, G, B).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field


class PairAugParams(BaseModel):
    """Probabilities and ranges of :func:`augment_pair_batch` (``train.pair_aug`` in a config)."""

    model_config = ConfigDict(extra="forbid")

    resolution_prob: float = Field(0.5, ge=0, le=1)
    scale: tuple[float, float] = (1.0, 2.5)
    blur_prob: float = Field(0.3, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    season_prob: float = Field(0.5, ge=0, le=1, description="per epoch")
    haze_prob: float = Field(0.25, ge=0, le=1, description="per epoch")
    haze_alpha: tuple[float, float] = (0.05, 0.3)
    contrast: tuple[float, float] = (0.7, 1.3)
    gamma: tuple[float, float] = (0.75, 1.35)
    gain: float = Field(0.12, ge=0, le=0.5)


def _uniform(n, lo, hi, like, gen=None):
    import torch

    return lo + (hi - lo) * torch.rand(n, device=like.device, dtype=like.dtype, generator=gen)


def _gaussian_blur(x, sigma: float):
    """Separable Gaussian blur of (1, C, H, W) with reflect padding."""
    import torch
    import torch.nn.functional as F

    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def degrade_resolution(img, factor: float, blur_sigma: float = 0.0, mode: str = "bilinear"):
    """Down- then up-sample one (C, H, W) image by ``factor`` (all channels alike), then blur."""
    import torch.nn.functional as F

    h, w = img.shape[-2:]
    x = img[None]
    if factor > 1.01:
        small = (max(1, round(h / factor)), max(1, round(w / factor)))
        x = F.interpolate(
            F.interpolate(x, size=small, mode="area"), size=(h, w), mode=mode, align_corners=False
        )
    if blur_sigma > 0:
        x = _gaussian_blur(x, blur_sigma)
    return x[0].clamp(0, 1)


def season_shift(rgb, p: PairAugParams, apply, gen=None):
    """Season and atmosphere change of (B, 3, H, W) images where ``apply`` (B,) bool is set."""
    import torch

    b = rgb.shape[0]
    if not bool(apply.any()):
        return rgb

    def col(v):
        return v.view(b, 1, 1, 1)

    r, g, bl = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    lum = rgb.mean(dim=1, keepdim=True)
    kind = torch.rand(b, device=rgb.device, generator=gen)
    # green -> brown / straw (dry season, autumn)
    veg = (2 * g - r - bl).mul(5).clamp(0, 1) * col(_uniform(b, 0.5, 1.0, rgb, gen))
    dry_tint = torch.stack(
        [
            _uniform(b, 0.9, 1.35, rgb, gen),
            _uniform(b, 0.8, 1.05, rgb, gen),
            _uniform(b, 0.55, 0.85, rgb, gen),
        ],
        dim=1,
    ).view(b, 3, 1, 1)
    dry = (lum * dry_tint * col(_uniform(b, 1.0, 1.4, rgb, gen))).clamp(0, 1)
    # dry ground / brown -> green (rainy season, spring)
    soil = ((r - bl) * 4 - (r - g).abs() * 2).clamp(0, 1) * col(_uniform(b, 0.3, 0.6, rgb, gen))
    green_tint = torch.stack(
        [
            _uniform(b, 0.6, 0.85, rgb, gen),
            _uniform(b, 1.05, 1.3, rgb, gen),
            _uniform(b, 0.55, 0.8, rgb, gen),
        ],
        dim=1,
    ).view(b, 3, 1, 1)
    green = (lum * green_tint).clamp(0, 1)
    to_dry = col((kind < 0.45).to(rgb.dtype))
    to_green = col(((kind >= 0.45) & (kind < 0.8)).to(rgb.dtype))
    out = rgb + to_dry * veg * (dry - rgb) + to_green * soil * (green - rgb)
    out = out.clamp(0, 1) ** col(_uniform(b, *p.gamma, rgb, gen))
    gains = (
        1
        + (2 * torch.rand(b, 3, 1, 1, device=rgb.device, dtype=rgb.dtype, generator=gen) - 1)
        * p.gain
    )
    out = out * gains
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * col(_uniform(b, *p.contrast, rgb, gen)) + mean
    haze = (torch.rand(b, device=rgb.device, generator=gen) < p.haze_prob).to(rgb.dtype) * _uniform(
        b, *p.haze_alpha, rgb, gen
    )
    veil = torch.stack(
        [
            _uniform(b, 0.75, 0.9, rgb, gen),
            _uniform(b, 0.8, 0.92, rgb, gen),
            _uniform(b, 0.85, 1.0, rgb, gen),
        ],
        dim=1,
    ).view(b, 3, 1, 1)
    out = out * (1 - col(haze)) + veil * col(haze)
    return torch.where(col(apply), out.clamp(0, 1), rgb)


def augment_pair_batch(imgs, params: PairAugParams | None = None, gen=None):
    """One random draw of the pair augmentation for a (B, 6, H, W) float batch in 0..1; returns a new tensor.

    Parameters
    ----------
    imgs : float tensor (B, 6, H, W), baseline RGB then current RGB, values 0..1.
    params : probabilities and ranges.
    gen : optional ``torch.Generator`` on the tensor's device (default: the global generator).

    Returns
    -------
    torch.Tensor
        Same shape, dtype and device; ``imgs`` is not modified. Other channel counts are
        returned unchanged.
    """
    import torch

    p = params or PairAugParams()
    if imgs.ndim != 4 or imgs.shape[1] != 6:
        return imgs
    b = imgs.shape[0]
    out = imgs.clone()
    draws = torch.rand(b, 3, generator=gen, device=imgs.device).cpu()
    for i in range(b):
        if draws[i, 0] < p.resolution_prob:
            factor = float(p.scale[0] + (p.scale[1] - p.scale[0]) * draws[i, 1])
            sigma = (
                float(
                    p.blur_sigma[0]
                    + (p.blur_sigma[1] - p.blur_sigma[0])
                    * torch.rand(1, generator=gen, device=imgs.device).item()
                )
                if draws[i, 2] < p.blur_prob
                else 0.0
            )
            mode = "bilinear" if (i + int(factor * 1000)) % 2 else "bicubic"
            out[i] = degrade_resolution(out[i], factor, sigma, mode)
    for half in (slice(0, 3), slice(3, 6)):
        apply = torch.rand(b, device=imgs.device, generator=gen) < p.season_prob
        out[:, half] = season_shift(out[:, half], p, apply, gen)
    return out
