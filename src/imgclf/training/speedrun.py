"""A from-scratch CIFAR-style (32x32) speed run in the manner of the public airbench scripts.

Why a separate recipe from the Trainer: at ~2 s a run, per-batch Python, loaders and callbacks would cost more
than the arithmetic. Here the uint8 images live on the device, a whole epoch is augmented in a few kernels,
and the net is built for the data: a frozen patch-whitening first conv, BatchNorm with frozen unit weights
and fast-moving statistics, GELU, max-pooled conv blocks, a scaled-down linear head. SGD with summed loss,
label smoothing, a triangular LR, lookahead (EMA pull-back every few steps) and flip/translate TTA at the end.

Every knob lives in `SpeedConfig` and the presets in `SPEED_PRESETS` (imgclf/defaults.py: `fast`, ~10 epochs
like airbench94; `long`, wider and deeper for longer like airbench96); `config.resolve` turns a preset and the
user's flags into the run's knobs. The same code runs on a CPU (fp32 or bf16) and on CUDA
(bf16, or fp16 with a GradScaler), with optional `torch.compile` warmed up on dummy data and timed apart.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imgclf.config import TrainConfig
from imgclf.data.imageset import ImageSet, Splits
from imgclf.data.photos import Preprocess
from imgclf.defaults import SPEED_PRESETS, SpeedConfig
from imgclf.evaluation.metrics import tta_logits
from imgclf.models.checkpoint import checkpoint_payload
from imgclf.models.speednet import CIFAR_MEAN, CIFAR_STD, SpeedClassifier, SpeedNet
from imgclf.rundir import RunDir
from imgclf.runtime import autocast, cpu_has_bf16, seed_everything
from imgclf.training.checkpoint import save_atomic
from imgclf.training.engine import Fitted

FAST, LONG = SPEED_PRESETS["fast"], SPEED_PRESETS["long"]


def shrunk(cfg: SpeedConfig) -> SpeedConfig:
    """The same recipe at CPU-smoke size (a narrow net, one epoch, batches of 100 at the preset's per-step LR):
    exercises every code path of a preset in seconds."""
    return cfg.replace(widths=(16, 32, 32), batch_size=100, lr=cfg.lr * cfg.batch_size / 100, epochs=1.0,
                       eval_batch_size=250, whiten_images=500)



# -- data on the device ----------------------------------------------------------------------------------------

def to_device(data: ImageSet, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 32, 32, 3) images and int64 labels, resident on the device."""
    images = torch.from_numpy(np.ascontiguousarray(data.images)).to(device)
    return images, torch.from_numpy(np.asarray(data.labels, dtype=np.int64)).to(device)


def normalize(images: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """uint8 NHWC -> float NCHW standardized with the CIFAR-10 channel statistics."""
    mean = torch.tensor(CIFAR_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=images.device).view(1, 3, 1, 1)
    x = (images.permute(0, 3, 1, 2).float().div_(255) - mean) / std
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def translate(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Shift every image by its own random (dy, dx) in [-pad, pad] (reflect padding): rows, then columns,
    one masked copy per offset, so no index tensor of the whole set's size is built."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    shift = torch.randint(0, 2 * pad + 1, (2, n), generator=gen, device=x.device)
    rows = torch.empty((n, c, h, w + 2 * pad), dtype=x.dtype, device=x.device)
    for s in range(2 * pad + 1):
        m = shift[0] == s
        rows[m] = padded[m, :, s:s + h, :]
    out = torch.empty_like(x)
    for s in range(2 * pad + 1):
        m = shift[1] == s
        out[m] = rows[m, :, :, s:s + w]
    return out


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero (= the mean, after standardizing) a size x size square at a random place in every image."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h - size + 1, (n, 1, 1), generator=gen, device=x.device)
    cx = torch.randint(0, w - size + 1, (n, 1, 1), generator=gen, device=x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (ys >= cy) & (ys < cy + size) & (xs >= cx) & (xs < cx + size)
    return x.masked_fill(hole[:, None], 0.0)


def augment_epoch(x: torch.Tensor, epoch: int, base_flip: torch.Tensor, cfg: SpeedConfig,
                  gen: torch.Generator) -> torch.Tensor:
    """The whole training set augmented for one epoch. Alternating flip: each image is flipped at random in
    epoch 0 and the other way in each later epoch, so consecutive epochs see both views."""
    if cfg.flip == "alternate":
        flip = base_flip ^ bool(epoch % 2)
    elif cfg.flip == "random":
        flip = torch.rand(len(x), generator=gen, device=x.device) < 0.5
    else:
        flip = None
    if flip is not None:
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    if cfg.translate > 0:
        x = translate(x, cfg.translate, gen)
    if cfg.cutout > 0:
        x = cutout(x, cfg.cutout, gen)
    return x


# -- the network ------------------------------------------------------------------------------------------------

# -- optimization -----------------------------------------------------------------------------------------------

def param_groups(model: SpeedNet, cfg: SpeedConfig) -> list[dict[str, Any]]:
    """airbench's scaling: LR and decay per summed example (so the step grows with the batch, the linear
    scaling rule), BN biases at bias_scaler x the LR; the whitening
    bias in a group of its own so it can be stopped (LR 0) without changing the graph torch.compile saw."""
    scale = 1024 * (1 + 1 / (1 - cfg.momentum))  # 1024 examples times the steps momentum spans
    lr, wd = cfg.lr / scale, cfg.weight_decay * cfg.batch_size / scale
    norm_biases = [m.bias for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    taken = {id(p) for p in norm_biases} | {id(model.whiten.bias)}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    return [
        {"params": norm_biases, "lr": lr * cfg.bias_scaler, "weight_decay": wd / cfg.bias_scaler, "name": "bias"},
        {"params": others, "lr": lr, "weight_decay": wd, "name": "other"},
        {"params": [model.whiten.bias], "lr": lr, "weight_decay": wd, "name": "whiten_bias"},
    ]


def lr_factor(step: int, total: int, cfg: SpeedConfig) -> float:
    """Triangular: lr_start -> 1 over warmup_frac of the steps, then linearly down to lr_end."""
    peak = cfg.warmup_frac * total
    if step < peak:
        return cfg.lr_start + (1 - cfg.lr_start) * step / peak
    return 1 + (cfg.lr_end - 1) * (step - peak) / max(total - peak, 1)


class Lookahead:
    """Keeps an EMA of every float tensor of the state (weights and BN statistics) and pulls the net to it."""

    def __init__(self, model: nn.Module) -> None:
        self.live = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.ema = [t.detach().clone() for t in self.live]

    @torch.no_grad()
    def update(self, decay: float) -> None:
        torch._foreach_lerp_(self.ema, self.live, 1 - decay)
        torch._foreach_copy_(self.live, self.ema)


# -- precision, compile, evaluation -----------------------------------------------------------------------------

def resolve_precision(cfg: SpeedConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for cfg.precision (None = fp32); `auto` is bf16 on CUDA and on CPUs with native bf16."""
    name = cfg.precision
    if name == "auto":
        name = "bf16" if device.type == "cuda" or cpu_has_bf16() else "fp32"
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"precision {cfg.precision!r}: expected auto, fp32, bf16 or fp16")
    return dtypes[name]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, level: int, batch_size: int, device: torch.device,
            amp: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(plain logits, TTA logits): level 1 averages the image and its mirror; level 2 is imgclf's six-view
    TTA (the mirrored pair, and the pair shifted one pixel up-left and down-right)."""
    plain_all, tta_all = [], []
    with autocast(device, amp):
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size]
            plain = model(batch).float()
            if level >= 2:
                tta = tta_logits(model, batch)
            elif level == 1:
                tta = 0.5 * (plain + model(batch.flip(3)).float())
            else:
                tta = plain
            plain_all.append(plain)
            tta_all.append(tta)
    return torch.cat(plain_all), torch.cat(tta_all)


_WARM: set[tuple] = set()  # compiled shapes already seen in this process


def _compile_key(cfg: SpeedConfig, device: torch.device, num_test: int) -> tuple:
    return (device.type, cfg.widths, cfg.depth, cfg.whiten_kernel, cfg.batch_size, cfg.eval_batch_size,
            cfg.precision, cfg.channels_last, cfg.compile_mode, cfg.tta_level, num_test)


def warm_up_compile(cfg: SpeedConfig, device: torch.device, num_test: int, num_classes: int = 10) -> float:
    """Compile every graph a timed run will use (train step, eval at each batch shape) on random data, so the
    timed run excludes compilation; seconds spent, 0 when this process has already compiled these shapes."""
    key = _compile_key(cfg, device, num_test)
    if not cfg.compile or key in _WARM:
        return 0.0
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(12345)
    fake_train = ImageSet(torch.randint(0, 256, (2 * cfg.batch_size, 32, 32, 3), generator=gen,
                                        dtype=torch.uint8).numpy(),
                          np.arange(2 * cfg.batch_size) % num_classes, [str(i) for i in range(num_classes)])
    fake_test = ImageSet(fake_train.images[:1].repeat(num_test, 0), np.zeros(num_test, dtype=np.int64),
                         fake_train.classes)
    _train_and_evaluate(fake_train, fake_test, cfg.replace(epochs=3 / 2, log_every=0), device)
    _WARM.add(key)
    return time.perf_counter() - started


def run_speedrun(train: ImageSet, test: ImageSet, config: SpeedConfig, device: torch.device | str) -> dict[str, Any]:
    """Train a fresh SpeedNet on `train` and score it on `test`; with config.compile the graphs are compiled
    on dummy data first and that time is reported apart (`compile_seconds`) from `train_seconds`."""
    device = torch.device(device)
    compile_seconds = warm_up_compile(config, device, len(test), len(train.classes))
    result = _train_and_evaluate(train, test, config, device)
    result["compile_seconds"] = round(compile_seconds, 2)
    return result


def _train_and_evaluate(train: ImageSet, test: ImageSet, cfg: SpeedConfig, device: torch.device) -> dict[str, Any]:
    model, step_model, result = fit_speednet(train, cfg, device)
    amp = resolve_precision(cfg, device)
    started = time.perf_counter()
    test_u8, test_y = to_device(test, device)
    plain, tta = predict(step_model, normalize(test_u8, cfg.channels_last), cfg.tta_level, cfg.eval_batch_size,
                         device, amp)
    _sync(device)
    return {"tta_accuracy": (tta.argmax(1) == test_y).float().mean().item(),
            "accuracy": (plain.argmax(1) == test_y).float().mean().item(),
            "eval_seconds": round(time.perf_counter() - started, 3), **result}


def fit_speednet(train: ImageSet, cfg: SpeedConfig, device: torch.device) -> tuple[SpeedNet, nn.Module, dict[str, Any]]:
    """Train a fresh SpeedNet: (the net in eval mode, the module to call for predictions: compiled or the same
    net, training figures)."""
    seed_everything(cfg.seed)
    amp = resolve_precision(cfg, device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    train_u8, train_y = to_device(train, device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = SpeedNet(len(train.classes), cfg.widths, cfg.depth, cfg.bn_momentum, cfg.whiten_kernel,
                     cfg.head_scale).to(device, memory_format=fmt)
    step_model = torch.compile(model, mode=cfg.compile_mode, dynamic=False) if cfg.compile else model
    optimizer = torch.optim.SGD(param_groups(model, cfg), lr=0.0, momentum=cfg.momentum, nesterov=True)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    scaler = torch.amp.GradScaler(device.type, init_scale=cfg.fp16_init_scale, enabled=amp == torch.float16)
    lookahead = Lookahead(model) if cfg.lookahead else None
    steps_per_epoch = len(train_y) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_y)} training images is fewer than one batch of {cfg.batch_size}")
    total = math.ceil(cfg.epochs * steps_per_epoch)
    losses: list[tuple[int, float]] = []

    _sync(device)
    started = time.perf_counter()
    x_all = normalize(train_u8, cfg.channels_last)
    sample = torch.randperm(len(x_all), generator=gen, device=device)[:cfg.whiten_images]  # sets come class-sorted
    model.init_whitening(x_all[sample], cfg.whiten_eps)
    base_flip = torch.rand(len(x_all), generator=gen, device=device) < 0.5
    step, epoch = 0, 0
    model.train()
    while step < total:
        if epoch >= cfg.whiten_bias_epochs:
            next(g for g in optimizer.param_groups if g["name"] == "whiten_bias")["base_lr"] = 0.0
        order = torch.randperm(len(x_all), generator=gen, device=device)
        x_epoch = augment_epoch(x_all, epoch, base_flip, cfg, gen)[order].contiguous(memory_format=fmt)
        y_epoch = train_y[order]
        for b in range(min(steps_per_epoch, total - step)):
            batch = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
            # -- the training step --------------------------------------------------------------------------
            factor = lr_factor(step, total, cfg)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            with autocast(device, amp):
                logits = step_model(x_epoch[batch])
                loss = F.cross_entropy(logits.float(), y_epoch[batch], label_smoothing=cfg.label_smoothing,
                                       reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            if lookahead is not None and step % cfg.lookahead_every == 0:
                lookahead.update(cfg.lookahead_decay ** cfg.lookahead_every * (step / total) ** 3)
            if cfg.log_every and (step % cfg.log_every == 0 or step == 1):
                losses.append((step, loss.item() / cfg.batch_size))
            # ------------------------------------------------------------------------------------------------
        epoch += 1
    if lookahead is not None:
        lookahead.update(1.0)  # finish on the EMA weights
    _sync(device)
    train_seconds = time.perf_counter() - started
    model.eval()
    result = {
        "train_seconds": round(train_seconds, 3),
        "epochs": round(step / steps_per_epoch, 3),
        "steps": step,
        "images_per_second": round(step * cfg.batch_size / train_seconds, 1),
        "precision": str(amp).removeprefix("torch.") if amp else "fp32",
        "device": str(device),
        "num_params": sum(p.numel() for p in model.parameters()),
        "grad_scale": scaler.get_scale() if scaler.is_enabled() else None,
    }
    if cfg.log_every:
        result["losses"] = [[s, round(v, 4)] for s, v in losses]
    return model, step_model, result


# -- `imgclf train --recipe speedrun`: the speed engine behind the CLI -----------------------------------------

def fit_speedrun(cfg: TrainConfig, splits: Splits, device: torch.device, run: RunDir) -> Fitted:
    """Train with the speed engine on the knobs the plan resolved (cfg.extra["speedrun_config"]) and save
    checkpoints/last.pt, which evaluates, predicts, serves and exports like any other; train() scores it."""
    speed = SpeedConfig.from_dict(cfg.extra["speedrun_config"])
    run.write_plan(cfg, splits.classes)
    compile_seconds = warm_up_compile(speed, device, len(splits.val), len(splits.classes))
    net, step_model, result = fit_speednet(splits.train, speed, device)
    model = SpeedClassifier(net).to(memory_format=torch.contiguous_format)
    preprocess = Preprocess(cfg.image_size, cfg.resize, cfg.crop_fraction)
    save_atomic(checkpoint_payload(model.state_dict(), cfg, splits.classes, preprocess.to_dict()),
                run.last_checkpoint)
    amp = resolve_precision(speed, device)

    def logits(part: ImageSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        images, labels = to_device(part, device)
        plain, tta = predict(step_model, normalize(images, speed.channels_last), speed.tta_level,
                             speed.eval_batch_size, device, amp)
        return tta.float().cpu(), labels.cpu(), plain.float().cpu() if speed.tta_level else None

    figures = {"epochs_run": result["epochs"], "steps": result["steps"], "train_seconds": result["train_seconds"],
               "compile_seconds": round(compile_seconds, 2), "images_per_second": result["images_per_second"],
               "stop_reason": None, "amp": str(amp).removeprefix("torch.") if amp else None,
               "speedrun": cfg.speedrun}
    return Fitted(model, cfg, logits, figures)
