"""Fine-tune ImageNet-pretrained EfficientNet-Lite0 on CIFAR-10-JPEG on a GPU: accuracy, seconds, images/s.

A lean loop rather than the Trainer, to see what the GPU itself can do: imgclf's TensorLoader keeps the uint8
set on the device and flips, translates and upsamples whole batches there (to --resolution, channels_last);
SGD (Nesterov) or AdamW, label smoothing, warm-up then cosine, bf16 autocast. Test accuracy plain and with
imgclf's flip/shift TTA. Prints one JSON object (also to --out, rewritten after every epoch, so a timeout
keeps the progress). `--smoke`: a small subset at 64 px for a few steps on the CPU, fp32, in seconds.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
import torch.nn.functional as F

from _common import add_gpu_args, emit, find_archive, full_train_and_test, machine_info, peak_gpu_memory_mb
from imgclf.data.loaders import BatchAugment, TensorLoader
from imgclf.evaluation.metrics import predict_logits
from imgclf.models import build_model
from imgclf.runtime import autocast, resolve_device, seed_everything
from imgclf.training.optim import decay_split
from imgclf.training.schedules import lr_multiplier


def make_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    groups = decay_split(model.parameters(), args.lr, args.weight_decay)
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=args.lr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    parser.add_argument("--lr", type=float, default=None, help="peak LR (default: sgd 0.05, adamw 1e-3)")
    parser.add_argument("--weight-decay", type=float, default=None, help="default: sgd 5e-5, adamw 0.05")
    parser.add_argument("--warmup", type=float, default=0.1, help="share of the steps spent warming up")
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (timed apart)")
    parser.add_argument("--seed", type=int, default=0)
    add_gpu_args(parser)
    args = parser.parse_args(argv)
    sgd = args.optimizer == "sgd"
    args.lr = args.lr if args.lr is not None else (0.05 if sgd else 1e-3)
    args.weight_decay = args.weight_decay if args.weight_decay is not None else (5e-5 if sgd else 0.05)
    if args.smoke:
        args.resolution, args.epochs, args.batch_size, args.precision = 64, 1, 32, "fp32"
    device = torch.device("cpu") if args.smoke else resolve_device("auto")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.precision]

    started = time.perf_counter()
    train, test = full_train_and_test(find_archive(args.archive), smoke=args.smoke, smoke_sizes=(160, 64))
    data_seconds = time.perf_counter() - started
    seed_everything(args.seed)
    model = build_model(args.model, len(train.classes), pretrained=True, dropout=args.dropout)
    model = model.to(device, memory_format=torch.channels_last)
    step_model = torch.compile(model) if args.compile else model
    optimizer = make_optimizer(model, args)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    loader = TensorLoader(train, args.batch_size, device, shuffle=True, augment=BatchAugment(crop_pad=4, flip=True),
                          seed=args.seed, input_size=args.resolution, drop_last=True)
    test_loader = TensorLoader(test, 500 if device.type == "cuda" else 64, device, input_size=args.resolution)
    total = args.epochs * len(loader)
    result: dict[str, Any] = {
        "benchmark": "gpu_finetune", "smoke": args.smoke, **machine_info(device), "model": args.model,
        "pretrained": True, "resolution": args.resolution, "epochs": args.epochs, "batch_size": args.batch_size,
        "optimizer": args.optimizer, "lr": args.lr, "weight_decay": args.weight_decay, "warmup": args.warmup,
        "label_smoothing": args.label_smoothing, "precision": args.precision, "compile": args.compile,
        "num_train": len(train), "num_test": len(test), "data_seconds": round(data_seconds, 2), "history": [],
    }

    compile_seconds = 0.0
    if args.compile:  # one untimed step compiles forward and backward; the weights are restored after it
        state = {k: v.clone() for k, v in model.state_dict().items()}
        t0 = time.perf_counter()
        x, y = next(iter(loader))
        with autocast(device, amp):
            F.cross_entropy(step_model(x).float(), y).backward()
        model.load_state_dict(state)
        model.zero_grad(set_to_none=True)
        compile_seconds = time.perf_counter() - t0
    train_seconds, step = 0.0, 0
    model.train()
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for x, y in loader:
            # -- the training step ------------------------------------------------------------------------
            for group in optimizer.param_groups:
                group["lr"] = args.lr * lr_multiplier("cosine", step / total, args.warmup)
            with autocast(device, amp):
                loss = F.cross_entropy(step_model(x).float(), y, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach()
            step += 1
            # ------------------------------------------------------------------------------------------------
        epoch_loss = loss_sum.item() / len(loader)  # syncs, so the epoch's time is complete
        train_seconds += time.perf_counter() - t0
        result["history"].append({"epoch": epoch + 1, "train_loss": round(epoch_loss, 4),
                                  "seconds": round(train_seconds, 2)})
        if args.out:
            emit(result, args.out, echo=False)

    t0 = time.perf_counter()
    logits, labels = predict_logits(step_model, test_loader, amp_dtype=amp)
    tta, _ = predict_logits(step_model, test_loader, amp_dtype=amp, tta=True)
    result.update({
        "test_accuracy": round((logits.argmax(1) == labels).float().mean().item(), 4),
        "test_accuracy_tta": round((tta.argmax(1) == labels).float().mean().item(), 4),
        "train_seconds": round(train_seconds, 2), "compile_seconds": round(compile_seconds, 2),
        "eval_seconds": round(time.perf_counter() - t0, 2), "steps": step,
        "images_per_second": round(step * args.batch_size / train_seconds, 1),
        "peak_gpu_memory_mb": peak_gpu_memory_mb(device),
        "total_seconds": round(time.perf_counter() - started, 1),
    })
    emit(result, args.out)


if __name__ == "__main__":
    main()
