"""Fine-tuning strategies: which parameters train, at which learning rate, and when they unfreeze.

Strategies (after `imgclf.config.resolve_strategy`):

- scratch       every parameter at one LR (nothing pretrained, so no reason to treat layers differently)
- full          every parameter from the start; discriminative LRs (the head at `lr`, earlier layer groups
                lower by `lr_decay` per group)
- linear_probe  the backbone frozen for the whole run (BatchNorm statistics included); only the head trains
- staged        the default: the head on cached backbone features first, then the top layer groups with
                discriminative LRs while the bottom stays frozen (imgclf.training.staged)
- gradual       fastai's fine_tune: the head alone for `freeze_epochs` epochs, then everything with
                discriminative LRs

How the pieces meet the Trainer (imgclf.training.trainer):

1. `param_groups(model, strategy, lr, weight_decay)` gives the optimizer's groups. For `gradual` it returns
   the backbone's groups too, from the start, while they are still frozen: a frozen parameter has no
   `.grad`, and SGD and AdamW skip such parameters entirely (no step, no weight decay, no momentum state).
   So the optimizer never changes shape: the Trainer's per-group `peak_lr` times the schedule keeps
   working unchanged, and a checkpoint's optimizer state loads into a freshly built optimizer at any
   epoch, with nothing to rebuild on resume (no `add_param_group`, whose new groups an LR scheduler would
   not know about). The head's groups come last, so `optimizer.param_groups[-1]["lr"]` is the head's LR.
   Each group carries `name` and `lr_scale` (its LR over `lr`); with a scheduler that takes one peak LR
   per group (torch's OneCycleLR), pass `max_lr=[g["lr"] for g in groups]`, never a scalar, or every
   group gets the head's LR.
2. `finetune_callback(strategy, config)` is the callback that freezes and unfreezes; it decides from
   `trainer.epoch` alone at `on_fit_start` and every `on_epoch_start`, so a resumed run lands in the
   right state with no extra call.
3. A frozen backbone's BatchNorm layers stay in eval mode (running statistics fixed, normalizing with
   them) even after `model.train()`: `freeze_backbone` marks them and a forward pre-hook puts a marked
   layer back in eval mode before each forward. The Trainer may keep calling `model.train()`.
4. Fine-tuning a pretrained backbone (full, and gradual after unfreezing) keeps the BatchNorm running
   statistics fixed by default (`train_bn=False`; the BN affine weights still train), as Keras advises for
   transfer learning. Measured here: Lite0 from ImageNet on 1,000 CIFAR-10 images at 96 px, batch 32,
   SGD at a constant 0.005 for the head, one head-only epoch, then two unfrozen epochs: test accuracy
   0.544 -> 0.606 -> 0.646 with fixed statistics, 0.544 -> 0.424 -> 0.506 with BatchNorm training
   (linear probe alone: 0.576 -> 0.586 -> 0.612 at 0.02). One seed and small data: for large datasets
   far from ImageNet, `train_bn=True` (fastai's default) may win.

Under DDP (torchrun), DistributedDataParallel records at construction which parameters need gradients:
wrap the model unfrozen with `find_unused_parameters=True` for linear_probe and gradual (`GradualUnfreeze`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from imgclf.models.base import ImageClassifier
from imgclf.training.callbacks import Callback
from imgclf.training.optim import decay_split

if TYPE_CHECKING:
    from imgclf.config import TrainConfig

STRATEGIES = ("scratch", "full", "linear_probe", "gradual", "staged")
DEFAULT_LR_DECAY = 0.5  # per layer group; Lite0's 5 groups span lr/2 .. lr/32 (fastai: about lr/100 .. lr)
MAX_FROZEN_SHARE = 0.25  # gradual unfreezes by this share of the run at the latest: a time budget shorter than
                        # `freeze_epochs` (one epoch of full CIFAR-10 is minutes on a CPU) must not end as a
                        # linear probe
_FROZEN = "_imgclf_frozen"  # attribute on a BatchNorm module whose statistics must not move


def unwrap(model: nn.Module) -> ImageClassifier:
    """The ImageClassifier inside a DDP wrapper (`.module`) or a torch.compile wrapper (`._orig_mod`)."""
    while not isinstance(model, ImageClassifier):
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            raise TypeError("expected an ImageClassifier (or a DDP/compiled wrapper), "
                            f"got {type(model).__name__}")
        model = inner
    return model


def _head_params(model: ImageClassifier) -> list[nn.Parameter]:
    return list(model.head.parameters())


def _backbone_groups(model: ImageClassifier) -> list[list[nn.Parameter]]:
    """Layer groups input side first, each parameter once; any backbone parameter the groups miss joins
    the group nearest the head (so nothing is silently left out of the optimizer)."""
    head_ids = {id(p) for p in _head_params(model)}
    seen = set(head_ids)
    groups: list[list[nn.Parameter]] = []
    for group in model.layer_groups():
        kept = [p for p in group if id(p) not in seen]
        seen.update(id(p) for p in kept)
        groups.append(kept)
    leftover = [p for p in model.parameters() if id(p) not in seen]
    if leftover:
        if groups:
            groups[-1].extend(leftover)
        else:
            groups.append(leftover)
    return [g for g in groups if g]


def _split(params: list[nn.Parameter], name: str, lr: float, scale: float,
           weight_decay: float) -> list[dict[str, Any]]:
    """Kernels and matrices decay; 1-d parameters (norm weights, biases) do not (optim.decay_split), each
    group named and scaled for the discriminative LRs."""
    groups = decay_split(params, lr * scale, weight_decay, only_trainable=False)  # frozen now, thawed later
    for group in groups:
        group.update(lr_scale=scale, name=name if group["params"][0].ndim > 1 else f"{name}/no_decay")
    return groups


def param_groups(model: nn.Module, strategy: str, lr: float, weight_decay: float,
                 lr_decay: float = DEFAULT_LR_DECAY) -> list[dict[str, Any]]:
    """Optimizer param groups for `strategy`, input side first and the head last.

    scratch: all at `lr`. full, gradual, staged: head at `lr`, backbone group k (counting from the head, 1-based)
    at `lr * lr_decay**k`. linear_probe: the head only. Weight decay is off for 1-d parameters everywhere.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES} (resolve 'auto' first), got {strategy!r}")
    model = unwrap(model)
    head = _split(_head_params(model), "head", lr, 1.0, weight_decay)
    if strategy == "linear_probe":
        return head
    backbone = _backbone_groups(model)
    if strategy == "scratch":
        return _split([p for g in backbone for p in g], "backbone", lr, 1.0, weight_decay) + head
    n = len(backbone)
    out: list[dict[str, Any]] = []
    for i, group in enumerate(backbone):
        out += _split(group, f"group{i}", lr, lr_decay ** (n - i), weight_decay)
    return out + head


# -- freezing ---------------------------------------------------------------------------------------------


def _keep_frozen_bn_in_eval(module: nn.Module, args: Any) -> None:
    """Forward pre-hook: a frozen BatchNorm normalizes with, and keeps, its running statistics."""
    if module.training and getattr(module, _FROZEN, False):
        module.train(False)


def _backbone_norms(model: ImageClassifier) -> list[_BatchNorm]:
    head = set(model.head.modules())
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m not in head]


def freeze_bn_stats(model: nn.Module) -> None:
    """Fix the backbone's BatchNorm running statistics (eval mode for good); their weights may still train.

    Idempotent. The layers stay in eval mode through later `model.train()` calls: a forward pre-hook,
    registered once per layer, restores eval mode while the layer is marked frozen.
    """
    for bn in _backbone_norms(unwrap(model)):
        setattr(bn, _FROZEN, True)
        bn.train(False)
        if _keep_frozen_bn_in_eval not in bn._forward_pre_hooks.values():
            bn.register_forward_pre_hook(_keep_frozen_bn_in_eval)


def freeze_backbone(model: nn.Module) -> None:
    """Stop the backbone from changing: no gradients for it, BatchNorm statistics fixed; the head trains.

    Idempotent; see `freeze_bn_stats` for how BatchNorm stays in eval mode.
    """
    model = unwrap(model)
    head_ids = {id(p) for p in _head_params(model)}
    for p in model.parameters():
        if id(p) not in head_ids:
            p.requires_grad_(False)
            p.grad = None
    freeze_bn_stats(model)


def unfreeze(model: nn.Module, train_bn: bool = True) -> None:
    """Train every parameter again. With `train_bn`, BatchNorm layers follow the model's train/eval mode
    again (running statistics update); without, their statistics stay fixed (see the module docstring)."""
    model = unwrap(model)
    for p in model.parameters():
        p.requires_grad_(True)
    if not train_bn:
        freeze_bn_stats(model)
        return
    for bn in _backbone_norms(model):
        if getattr(bn, _FROZEN, False):
            setattr(bn, _FROZEN, False)
            bn.train(model.training)


def is_frozen(model: nn.Module) -> bool:
    """True when every backbone parameter is frozen."""
    model = unwrap(model)
    head_ids = {id(p) for p in _head_params(model)}
    return not any(p.requires_grad for p in model.parameters() if id(p) not in head_ids)


def set_train_mode(model: nn.Module, training: bool = True) -> nn.Module:
    """`model.train(training)`, with frozen BatchNorm layers put straight back in eval mode.

    The forward pre-hook does this anyway before each forward; this makes `.training` flags right at once
    (for code that inspects them before a forward).
    """
    model.train(training)
    for bn in _backbone_norms(unwrap(model)):
        if getattr(bn, _FROZEN, False):
            bn.train(False)
    return model


def set_trainable_top(model: nn.Module, groups: int) -> None:
    """The head and the `groups` backbone layer groups nearest it train; everything below is frozen.
    BatchNorm statistics stay fixed throughout (see the module docstring)."""
    model = unwrap(model)
    freeze_backbone(model)
    backbone = model.layer_groups()
    for group in backbone[len(backbone) - groups:] if groups > 0 else []:
        for p in group:
            p.requires_grad_(True)
    freeze_bn_stats(model)


# -- callbacks --------------------------------------------------------------------------------------------


class GradualUnfreeze(Callback):
    """The backbone frozen while `trainer.epoch < freeze_epochs` (0-based epochs) and the run is less than
    MAX_FROZEN_SHARE done (checked before every batch), trained after.

    Assumes (see the module docstring): the optimizer was built from `param_groups(model, "gradual", ...)`,
    so it already holds the backbone's groups with their discriminative LRs; unfreezing only turns their
    gradients on. The state follows from `trainer.epoch` at `on_fit_start` and each `on_epoch_start`, so
    it is deterministic and right after a resume. `freeze_epochs=None` reads `trainer.config.freeze_epochs`;
    `math.inf` keeps the backbone frozen for good (linear_probe), 0 trains everything from the start
    (full). `train_bn` says whether BatchNorm statistics update once unfrozen (default: no, see the
    module docstring).

    DDP: DistributedDataParallel only all-reduces the parameters that needed gradients when it was built,
    and errors on parameters that then get none unless built with `find_unused_parameters=True`. So for
    gradual and linear_probe under torchrun, build DDP with every parameter trainable and
    `find_unused_parameters=True`, and freeze after wrapping (this callback does that at fit start).
    Checked with gloo on 2 CPU processes: that way training works and the unfrozen backbone stays equal
    across ranks; wrapping an already-frozen model trains without error but lets the ranks' backbones
    drift apart after unfreezing, and freezing a model wrapped without find_unused_parameters raises.
    """

    def __init__(self, freeze_epochs: float | None = None, train_bn: bool = False) -> None:
        self.freeze_epochs = freeze_epochs
        self.train_bn = train_bn
        self.frozen = False

    def frozen_at(self, epoch: int, trainer: Any) -> bool:
        limit = self.freeze_epochs if self.freeze_epochs is not None else trainer.config.freeze_epochs
        if math.isinf(limit):
            return True
        return epoch < limit and trainer.progress() < MAX_FROZEN_SHARE

    def _apply(self, trainer: Any, epoch: int) -> None:
        model = unwrap(trainer.model)
        self.frozen = self.frozen_at(epoch, trainer)
        if self.frozen:
            freeze_backbone(model)
            return
        in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
        missing = sum(1 for p in model.parameters() if id(p) not in in_optimizer)
        if missing:
            raise RuntimeError(f"{missing} parameters are not in the optimizer; build it from "
                               "param_groups(model, 'gradual', ...) so unfreezing has groups to train")
        unfreeze(model, train_bn=self.train_bn)

    def on_fit_start(self, trainer: Any) -> None:
        self._apply(trainer, trainer.epoch)

    def on_epoch_start(self, trainer: Any) -> None:
        self._apply(trainer, trainer.epoch)

    def on_batch_start(self, trainer: Any) -> None:
        """Unfreeze mid-epoch once the run is MAX_FROZEN_SHARE done (steps, or seconds of a time budget)."""
        if self.frozen and not self.frozen_at(trainer.epoch, trainer):
            self._apply(trainer, trainer.epoch)

    def prepare_resume(self, trainer: Any, epoch: int) -> None:
        """Nothing to rebuild (the optimizer's groups never change); set the freeze state for `epoch`."""
        self._apply(trainer, epoch)


class StagedUnfreeze(Callback):
    """Staged fine-tuning's second phase (imgclf.training.staged): keeps the chosen top of the backbone
    trainable and the rest frozen, at fit start and after a resume."""

    def __init__(self, groups: int | None) -> None:
        self.groups = groups

    def _apply(self, trainer: Any) -> None:
        groups = self.groups if self.groups is not None else trainer.config.unfreeze_groups
        set_trainable_top(trainer.model, groups or 0)

    def on_fit_start(self, trainer: Any) -> None:
        self._apply(trainer)

    def prepare_resume(self, trainer: Any, epoch: int) -> None:
        self._apply(trainer)


def finetune_callback(strategy: str, config: TrainConfig | None = None, train_bn: bool = False) -> Callback:
    """The callback a strategy needs: linear_probe frozen for good, gradual frozen for `freeze_epochs`,
    full unfrozen from the start (with BatchNorm statistics per `train_bn`); scratch needs none."""
    if strategy == "linear_probe":
        return GradualUnfreeze(math.inf)
    if strategy == "gradual":
        return GradualUnfreeze(config.freeze_epochs if config is not None else None, train_bn=train_bn)
    if strategy == "full":
        return GradualUnfreeze(0, train_bn=train_bn)
    if strategy == "staged":
        return StagedUnfreeze(config.unfreeze_groups if config is not None else None)
    return Callback()
