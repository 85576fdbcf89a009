"""Fine-tuning strategies: freezing really freezes, gradual unfreezing, discriminative LRs, strategy choice."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from imgclf.config import TrainConfig, resolve_strategy
from imgclf.errors import UserError
from imgclf.models import build_model
from imgclf.models import pretrained as _lite  # noqa: F401  (registers efficientnet_lite0)
from imgclf.models.base import ImageClassifier
from imgclf.training import finetune as ft

LR, WD = 0.05, 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model() -> ImageClassifier:
    torch.manual_seed(0)
    return build_model("efficientnet_lite0", 4)  # random init is enough to test the mechanics


def _small() -> ImageClassifier:
    """A two-stage conv-BN net: enough for the mechanics that do not depend on Lite0's layout."""
    torch.manual_seed(0)
    stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
    body = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
    return ImageClassifier(nn.Sequential(stem, body, nn.AdaptiveAvgPool2d(1), nn.Flatten()), 16, 4,
                           groups=[stem, body])


def _steps(model: ImageClassifier, optimizer: torch.optim.Optimizer, n: int = 2, size: int = 32) -> None:
    model.train()  # plain train(): frozen BatchNorm must stay put without any help from the caller
    for _ in range(n):
        x, y = torch.rand(4, 3, size, size), torch.randint(0, 4, (4,))
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def _backbone_state(model: ImageClassifier) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.features.state_dict().items()}


def _bns(model: ImageClassifier) -> list[_BatchNorm]:
    return [m for m in model.features.modules() if isinstance(m, _BatchNorm)]


def _sgd(groups: list[dict]) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=LR, momentum=0.9, nesterov=True)


def _trainer(model: ImageClassifier, optimizer: torch.optim.Optimizer, **cfg) -> SimpleNamespace:
    config = TrainConfig(model="efficientnet_lite0", pretrained=True, **cfg)
    trainer = SimpleNamespace(model=model, optimizer=optimizer, epoch=0, config=config, done=0.0)
    trainer.progress = lambda: trainer.done  # share of the run done, as Trainer.progress() reports it
    return trainer


def test_linear_probe_changes_only_the_head() -> None:
    model = _model()
    ft.freeze_backbone(model)
    groups = ft.param_groups(model, "linear_probe", LR, WD)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.head.parameters()}
    before, head_before = _backbone_state(model), copy.deepcopy(model.head.state_dict())
    _steps(model, torch.optim.SGD(groups, lr=LR, momentum=0.9, weight_decay=WD))
    after = model.features.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats, bit for bit
    assert all(p.grad is None and not p.requires_grad for p in model.features.parameters())
    assert all(not bn.training for bn in _bns(model))
    assert model.training and model.head.training
    assert not torch.equal(head_before["1.weight"], model.head[1].weight)


def test_frozen_bn_survives_deepcopy_and_set_train_mode() -> None:
    model = _model()
    ft.freeze_backbone(model)
    ft.freeze_backbone(model)  # idempotent: one hook per layer
    assert all(len(bn._forward_pre_hooks) == 1 for bn in _bns(model))
    twin = copy.deepcopy(model)
    ft.set_train_mode(twin, True)
    assert all(not bn.training for bn in _bns(twin))
    before = _backbone_state(twin)
    with torch.no_grad():
        twin(torch.rand(4, 3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in twin.features.state_dict().items())


def test_unfreeze_restores_training() -> None:
    model = _model()
    ft.freeze_backbone(model)
    model.train()
    ft.unfreeze(model, train_bn=False)
    assert all(p.requires_grad for p in model.parameters())
    assert all(not bn.training for bn in _bns(model))  # statistics still fixed
    ft.unfreeze(model, train_bn=True)
    assert all(bn.training for bn in _bns(model))
    ft.set_train_mode(model, False)
    assert all(not bn.training for bn in _bns(model))


def test_discriminative_lrs_and_no_decay_for_1d() -> None:
    model = _model()
    groups = ft.param_groups(model, "full", LR, WD, lr_decay=0.5)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    assert groups[-1]["name"].startswith("head") and groups[-1]["lr"] == LR
    backbone = [g for g in groups if not g["name"].startswith("head")]
    lrs = [g["lr"] for g in backbone if g["name"].endswith("no_decay")]
    assert len(lrs) == 5 and lrs == sorted(lrs) and lrs[-1] == pytest.approx(LR * 0.5)
    assert lrs[0] == pytest.approx(LR * 0.5**5)
    for g in groups:
        assert g["lr"] == pytest.approx(LR * g["lr_scale"])
        assert g["weight_decay"] == (0.0 if all(p.ndim <= 1 for p in g["params"]) else WD)
        assert all(p.ndim > 1 for p in g["params"]) or all(p.ndim <= 1 for p in g["params"])
    scratch = ft.param_groups(model, "scratch", LR, WD)
    assert {g["lr"] for g in scratch} == {LR} and len(scratch) == 4


def test_gradual_trains_head_first_then_everything_at_lower_lrs() -> None:
    model = _model()
    optimizer = _sgd(ft.param_groups(model, "gradual", LR, WD))
    trainer = _trainer(model, optimizer, strategy="gradual", freeze_epochs=1)
    callback = ft.finetune_callback("gradual", trainer.config)
    callback.on_fit_start(trainer)
    callback.on_epoch_start(trainer)
    assert ft.is_frozen(model)
    before = _backbone_state(model)
    _steps(model, optimizer, n=1)
    assert all(torch.equal(before[k], v) for k, v in model.features.state_dict().items())
    saved = copy.deepcopy(optimizer.state_dict())

    trainer.epoch = 1
    callback.on_epoch_start(trainer)
    assert not ft.is_frozen(model)
    _steps(model, optimizer, n=1)
    changed = model.features.state_dict()
    assert not torch.equal(before["conv_stem.weight"], changed["conv_stem.weight"])
    assert not torch.equal(before["bn1.weight"], changed["bn1.weight"])  # BN affine weights train
    assert torch.equal(before["bn1.running_mean"], changed["bn1.running_mean"])  # its statistics do not
    head_lr = optimizer.param_groups[-1]["lr"]
    assert all(g["lr"] < head_lr for g in optimizer.param_groups if not g["name"].startswith("head"))

    # resume at any epoch: same optimizer shape, the freeze state follows the epoch
    fresh = _model()
    fresh_opt = _sgd(ft.param_groups(fresh, "gradual", LR, WD))
    fresh_opt.load_state_dict(saved)
    resumed = _trainer(fresh, fresh_opt, strategy="gradual", freeze_epochs=1)
    ft.finetune_callback("gradual", resumed.config).prepare_resume(resumed, 3)
    assert not ft.is_frozen(fresh)
    ft.finetune_callback("gradual", resumed.config).prepare_resume(resumed, 0)
    assert ft.is_frozen(fresh)


def test_gradual_unfreezes_mid_epoch_when_the_frozen_epochs_would_eat_the_run() -> None:
    """A time budget shorter than `freeze_epochs` still fine-tunes: the backbone thaws at MAX_FROZEN_SHARE."""
    model = _model()
    trainer = _trainer(model, _sgd(ft.param_groups(model, "gradual", LR, WD)), strategy="gradual", freeze_epochs=1)
    callback = ft.finetune_callback("gradual", trainer.config)
    callback.on_fit_start(trainer)
    for done in (0.0, 0.1, ft.MAX_FROZEN_SHARE - 1e-6):
        trainer.done = done
        callback.on_batch_start(trainer)
        assert ft.is_frozen(model), done
    trainer.done = ft.MAX_FROZEN_SHARE
    callback.on_batch_start(trainer)
    assert not ft.is_frozen(model) and trainer.epoch == 0
    probe = ft.finetune_callback("linear_probe")  # a linear probe stays frozen however far the run gets
    probe.on_fit_start(trainer)
    trainer.done = 0.9
    probe.on_batch_start(trainer)
    assert ft.is_frozen(model)


def test_full_trains_everything_and_train_bn_moves_statistics() -> None:
    model = _small()
    optimizer = _sgd(ft.param_groups(model, "full", LR, WD))
    trainer = _trainer(model, optimizer, strategy="full")
    ft.finetune_callback("full", trainer.config, train_bn=True).on_fit_start(trainer)
    assert not ft.is_frozen(model)
    before = _backbone_state(model)
    _steps(model, optimizer)
    after = model.features.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before if not k.endswith("num_batches_tracked"))


def test_gradual_needs_the_backbone_in_the_optimizer() -> None:
    model = _model()
    optimizer = _sgd(ft.param_groups(model, "linear_probe", LR, WD))
    trainer = _trainer(model, optimizer, strategy="gradual", freeze_epochs=0)
    with pytest.raises(RuntimeError, match="param_groups"):
        ft.GradualUnfreeze().on_epoch_start(trainer)


def test_linear_probe_callback_never_unfreezes() -> None:
    model = _model()
    trainer = _trainer(model, _sgd(ft.param_groups(model, "linear_probe", LR, WD)), strategy="linear_probe")
    callback = ft.finetune_callback("linear_probe", trainer.config)
    for epoch in range(0, 100, 7):
        trainer.epoch = epoch
        callback.on_epoch_start(trainer)
        assert ft.is_frozen(model)


def test_unwrap_sees_through_wrappers() -> None:
    model = _model()
    assert ft.unwrap(torch.compile(model)) is model
    assert ft.unwrap(SimpleNamespace(module=model)) is model  # DDP keeps the module as .module


@pytest.mark.parametrize(("strategy", "pretrained", "weights", "expected"), [
    ("auto", True, None, "staged"),
    ("auto", False, None, "scratch"),
    ("auto", False, "mine.pt", "staged"),
    ("full", False, None, "scratch"),
    ("full", True, None, "full"),
    ("linear_probe", True, None, "linear_probe"),
    ("gradual", False, "mine.pt", "gradual"),
])
def test_resolve_strategy(strategy: str, pretrained: bool, weights: str | None, expected: str) -> None:
    cfg = TrainConfig(model="efficientnet_lite0", strategy=strategy, pretrained=pretrained, weights=weights)
    assert resolve_strategy(cfg) == expected


@pytest.mark.parametrize("strategy", ["linear_probe", "gradual", "staged"])
def test_freezing_a_random_backbone_is_refused(strategy: str) -> None:
    cfg = TrainConfig(model="efficientnet_lite0", strategy=strategy)
    with pytest.raises(UserError, match="--pretrained"):
        resolve_strategy(cfg)


def test_resolved_defaults_fine_tune_on_a_cpu_in_small_batches() -> None:
    from imgclf.config import BATCH_SIZE, FINETUNE_CPU_BATCH_SIZE, resolve
    from imgclf.data import load_splits

    splits = load_splits("digits")  # 1,293 training images: the batch cap (1/8 of them) is 128
    cpu = torch.device("cpu")
    finetune = resolve(TrainConfig(model="efficientnet_lite0", pretrained=True, device="cpu"), splits, cpu)
    assert (finetune.batch_size, finetune.optimizer, finetune.lr) == (FINETUNE_CPU_BATCH_SIZE, "adamw", 1e-3)
    assert (finetune.strategy, finetune.image_size, finetune.unfreeze_groups) == ("staged", 224, 2)
    scratch = resolve(TrainConfig(model="fastcnn", device="cpu"), splits, cpu)
    assert (scratch.batch_size, scratch.optimizer, scratch.image_size) == (min(BATCH_SIZE, 128), "sgd", 8)
    mine = resolve(TrainConfig(model="efficientnet_lite0", pretrained=True, device="cpu", batch_size=96), splits, cpu)
    assert mine.batch_size == 96  # what the user asked for stays


def test_small_squares_fine_tuned_on_a_cpu_under_a_budget_are_upsampled_less() -> None:
    """CIFAR-sized data on a CPU with a time budget: SMALL_SQUARES_FINETUNE_SIZE instead of the weights' own side
    (fewer pixels a pass, more images seen); without a budget, on photos or with --image-size, as before."""
    from imgclf.config import resolve
    from imgclf.data import load_splits
    from imgclf.defaults import SMALL_SQUARES_FINETUNE_SIZE

    splits = load_splits("digits")
    cpu = torch.device("cpu")

    def side(**changes: object) -> int | None:
        cfg = TrainConfig(model="efficientnet_lite2", pretrained=True, device="cpu").replace(**changes)
        return resolve(cfg, splits, cpu).image_size

    assert side(time_budget=60) == SMALL_SQUARES_FINETUNE_SIZE < 260
    assert side() == 260
    assert side(time_budget=60, image_size=224) == 224
    assert side(time_budget=60, model="fastcnn", pretrained=False) == 8
