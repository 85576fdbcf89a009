"""Grad-CAM (Selvaraju et al., 2017): where in the image a prediction comes from.

The class score's gradient at the last spatial feature map, averaged over each channel, weighs that
channel's activation; the weighted sum, clipped at zero, is a coarse map of the regions that raise the
score. The layer is found, not named: `cam_layer` traces one forward pass and takes the last module whose
output is a spatial (N, C, H, W) map, which for every registered model is the output of its last stage
(fastcnn's and resnet18's last block, speednet's conv blocks, EfficientNet-Lite's head conv + BN + act, a
convolutional timm backbone's last stage), since pooling to a vector always comes next. Where the input is
so small that the last stage is 1 x 1 (timm's resnet18 at 32 px), the stage before it is taken: a single
cell locates nothing.

Written with hooks rather than the `grad-cam` package: a few lines, no dependency. Serving imports this
module, so it imports nothing from training (nor inference: `imgclf predict --explain` is built on it
there, in imgclf.inference.predictor).
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from imgclf.errors import UserError

MIN_SIDE = 192  # overlays of small inputs (CIFAR's 32 px) are enlarged to at least this for the eye
ALPHA = 0.45  # the heatmap's share of each overlay pixel
COLORMAP = "jet"


def cam_layer(model: nn.Module, input_size: int) -> nn.Module:
    """The module whose output Grad-CAM weighs: the last one in a forward pass of a grey `input_size`
    image to return a spatial map (4-D, larger than 1 x 1). A model whose last such map is followed by
    token sequences (a vision transformer) has no convolutional map to explain: UserError."""
    spatial: list[tuple[int, nn.Module]] = []
    tokens: list[int] = []
    calls = 0

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal calls
        calls += 1
        if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-1] * output.shape[-2] > 1:
            spatial.append((calls, module))
        elif isinstance(output, torch.Tensor) and output.dim() == 3:
            tokens.append(calls)

    handles = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.full((1, 3, input_size, input_size), 0.5, device=device))
    finally:
        for handle in handles:
            handle.remove()
    if not spatial:
        raise UserError(f"Grad-CAM needs a spatial feature map, and {type(model).__name__} at {input_size} px "
                        "has none larger than 1x1")
    when, layer = spatial[-1]
    if any(t > when for t in tokens):
        raise UserError("Grad-CAM needs a convolutional feature map; this model ends in token sequences "
                        "(a vision transformer), which it cannot explain")
    return layer


class GradCAM:
    """Grad-CAM heatmaps of a model in eval mode, at the input's resolution, each scaled to [0, 1].

    The hook on the layer stays installed but records only inside `__call__` and only for the calling
    thread, so the same model can serve plain predictions on other threads at the same time.
    """

    def __init__(self, model: nn.Module, input_size: int) -> None:
        if model.training:
            raise ValueError("GradCAM needs a model in eval mode (BatchNorm must not learn from the images)")
        self.model = model
        self.device = next(model.parameters()).device
        self.layer = cam_layer(model, input_size)
        self._local = threading.local()
        self.layer.register_forward_hook(self._capture)

    def _capture(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        if getattr(self._local, "active", False):
            self._local.activation = output

    def __call__(self, images: torch.Tensor, targets: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(heatmaps float32 (N, H, W) in [0, 1], logits (N, classes)) for float [0, 1] images (N, 3, H, W);
        each map explains `targets[i]`, by default the predicted class."""
        self._local.active = True
        try:
            with torch.inference_mode(False), torch.enable_grad():
                # the input needs a gradient only so that a map behind frozen layers is still in the graph
                logits = self.model(images.detach().to(self.device, copy=True).requires_grad_(True))
                activation = self._local.activation
                chosen = logits.argmax(1) if targets is None else torch.as_tensor(targets, device=logits.device)
                # samples are independent in eval mode: one backward of the summed scores gives each its own
                (grads,) = torch.autograd.grad(logits.gather(1, chosen.view(-1, 1)).sum(), activation)
        finally:
            self._local.active = False
            self._local.activation = None
        weights = grads.float().mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * activation.detach().float()).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        peak = cam.flatten(1).amax(dim=1).view(-1, 1, 1)
        cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
        return cam.cpu().numpy(), logits.detach().float().cpu().numpy()


def overlay(image: torch.Tensor, cam: np.ndarray, min_side: int = MIN_SIDE) -> np.ndarray:
    """uint8 (H', W', 3): the heatmap in a colour map blended over the image as the model saw it (float
    [0, 1], (3, H, W)); small inputs enlarged (image by pixel repetition, map smoothly) to `min_side`."""
    from matplotlib import colormaps

    rgb = image.detach().float().cpu().clamp(0, 1)
    heat = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    factor = max(1, -(-min_side // min(rgb.shape[-2:])))
    if factor > 1:
        rgb = rgb.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
        heat = F.interpolate(heat, size=rgb.shape[-2:], mode="bilinear", align_corners=False)
    colours = colormaps[COLORMAP](heat[0, 0].clamp(0, 1).numpy())[..., :3]
    blend = (1 - ALPHA) * rgb.permute(1, 2, 0).numpy() + ALPHA * colours
    return np.round(blend * 255).clip(0, 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def overlays_png(cam: GradCAM, images: torch.Tensor, targets: Sequence[int] | None = None) -> list[bytes]:
    """One overlay PNG per image of a batch (float [0, 1], (N, 3, H, W))."""
    maps, _ = cam(images, targets)
    return [png_bytes(overlay(image, heat)) for image, heat in zip(images, maps, strict=True)]


def overlays_base64(cam: GradCAM, images: torch.Tensor, targets: Sequence[int] | None = None) -> list[str]:
    """The overlays as base64 PNG text, for JSON (the server's explain=true)."""
    return [base64.b64encode(png).decode("ascii") for png in overlays_png(cam, images, targets)]
