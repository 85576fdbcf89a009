"""Every default imgclf decides, with the evidence for it: the plan's constants, in one place.

`config.resolve` is the one step that applies them to a config (flags + data + machine -> the plan that
config.yaml records); the layers below it (data, loaders, models, compare, the server's flags) take their
fallbacks from here, so a number is never written twice. This module imports nothing of imgclf's: every layer
may read it. Figures: 2 CPU cores of an AMD EPYC with AVX-512 and bf16 unless a line says otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

# -- what to train -----------------------------------------------------------------------------------------------
DEFAULT_MODEL = "fastcnn"
DEFAULT_PRETRAINED_MODEL = "efficientnet_lite2"  # what --pretrained alone fine-tunes (as --recipe finetune)
DEFAULT_EPOCHS = 10  # without --epochs or --time-budget
NOMINAL_BUDGET_EPOCHS = 10  # a time-budgeted run without --epochs counts --warmup-epochs against this many

# -- sizing a from-scratch net to a CPU under a time budget ------------------------------------------------------
SIZING_WIDTHS = (1.0, 0.75, 0.5)  # from-scratch widths a time-budgeted CPU run may choose between, widest first
SIZING_MIN_EPOCHS = 6  # fastcnn on a bf16 CPU fits 7.7 epochs of CIFAR-10 in 180 s at width 1 (83.6 %)
RATE_PROBE_STEPS = 3  # timed steps per width when a CPU run sizes its net

# -- batch size, optimizer, learning rate ------------------------------------------------------------------------
BATCH_SIZE = 256
# Small images from scratch on a CPU (CIFAR-10 in 150 s, fastcnn, bf16 EPYC, test accuracy with TTA, one seed):
# batches of 128 train as many images a second as 256, so twice the steps an epoch (87.0 vs 85.7 %; 64: 86.9 %),
# and take a higher LR (0.2: 87.2 %); the first half of a budget at 24 px fits more epochs (with both: 87.6 %;
# benchmarks/cpu_recipe.py, 3 seeds: median 87.5 vs 85.8 %).
SCRATCH_CPU_BATCH_SIZE, SCRATCH_CPU_LR = 128, 0.2
LOW_RES_SHARE = 0.5
LOW_RES_SCALE = 0.75  # the side --low-res trains at, as a share of the input's
FINETUNE_CPU_BATCH_SIZE = 32  # EfficientNet-Lite0 at 128 px on 2 cores trains at 75 img/s in 1.7 GB at batch 32,
                              # 35 in 7.5 GB at 256 (big activations cost page faults)
SCRATCH_OPTIMIZER, FINETUNE_OPTIMIZER = "sgd", "adamw"
DEFAULT_LR = {"sgd": 0.1, "adamw": 2e-3}
FINETUNE_LR = 1e-3  # AdamW, the head's; the backbone's groups get less (see training/finetune.py)
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}
STAGED_UNFREEZE_GROUPS = 2  # staged fine-tuning without a time budget: the two layer groups nearest the head

# -- input and evaluation view -----------------------------------------------------------------------------------
PHOTO_INPUT_SIZE = 64  # photos from scratch when no --image-size is given: small nets train fast at 64 px
# Small squares (CIFAR's 32 px) fine-tuned on a CPU under a time budget are upsampled to this side, not to the
# weights' own: fewer pixels a pass, so the head sees more images. CIFAR-10-JPEG, the fine-tuned side of a 240 s
# compare on 2 Xeon cores (bf16), test accuracy (the head's images): Lite2 at 260 px (its own) 79.1 % (4,400),
# Lite2 at 192 px 80.7 % (9,440), Lite0 at 224 px (its own) 80.2 % (8,496); Lite2 at 192 px with the head phase
# given most of the budget (training/staged.py HEAD_ONLY_SHARE) 81.4 % (27,376), where fastcnn reached 87.4 %.
SMALL_SQUARES_FINETUNE_SIZE = 192
PHOTO_CROP_FRACTION = 0.875  # the standard ImageNet evaluation crop of the short side: 224 out of 256

# -- the machine -------------------------------------------------------------------------------------------------
# --threads unset on a CPU: one thread when it measures this many times faster than all cores, which happens only
# when other work keeps the cores busy (2-core Xeon, load 1-3: 3x to 30x on a conv forward and backward); idle,
# all cores are faster (about 0.6x the time of one), so runs on a free machine stay bit-for-bit repeatable.
THREADS_BUSY_RATIO = 1.5

# -- loaders -----------------------------------------------------------------------------------------------------
NUM_WORKERS = 2  # photo decoding threads/processes beside the training step (2 cores)
EVAL_BATCH_SIZE = 256  # on a GPU; a CPU evaluates as many images as hold the pixels of 256 at 32x32
EVAL_CPU_PIXELS = 256 * 32 * 32
EVAL_CPU_MIN_BATCH = 8

# -- compare -----------------------------------------------------------------------------------------------------
PLATEAU_MAX_EPOCHS = 200  # --early-stop N without --budget or --epochs: train until the plateau, within this
BUDGET_EPOCH_PASSES = 10  # the derived budget pays for about this many forward passes over the training set
BUDGET_RANGE = (60.0, 240.0)  # seconds per run: long enough to learn, short enough for 2 runs in 10 minutes
# --seeds unset, on a training set of at most SEEDS_MAX_TRAIN_IMAGES: the most seeds, MIN_SPREAD_SEEDS to
# COMPARE_SEEDS, whose runs all fit in SEEDS_WALL_SECONDS (the runs of a whole compare in about 10 minutes) at
# RUN_OVERHEAD_SECONDS each beside the budget, else 1. A derived budget shrinks so that MIN_SPREAD_SEEDS fit, to
# BUDGET_RANGE[0] at the least: a spread over seeds is what tells a real lead from a lucky run, and on a few hundred
# photos both sides gain little from the rest (flowers5 on 2 Xeon cores, bf16, test accuracy: 1 seed at 153 s,
# Lite2 94.0 % vs fastcnn 79.6 %, 5 min 37 s in all; 2 seeds at 90 s, 92.8 +- 0.0 % vs 77.0 +- 0.3 %, 6 min 38 s).
# Never below the floor: at 20 s Lite2's head saw 40 of 270 photos (76.7 % vs 88.0 % at 60 s).
COMPARE_SEEDS, MIN_SPREAD_SEEDS, SEEDS_MAX_TRAIN_IMAGES = 3, 2, 5000
SEEDS_WALL_SECONDS, RUN_OVERHEAD_SECONDS = 480.0, 20.0

# -- the LR range test (imgclf lr-find) --------------------------------------------------------------------------
LR_FIND_START, LR_FIND_END, LR_FIND_STEPS = 1e-6, 10.0, 100

# -- export --int8 (static int8 through ONNX Runtime's quantization tools) ------------------------------------------
INT8_CALIBRATION_IMAGES, INT8_MAX_ACCURACY_DROP = 256, 1.0  # calibration images; accuracy points int8 may lose

# -- calibrated confidence and the reject option (evaluation/selective.py) ----------------------------------------
# A temperature is fitted on the validation logits only where they hold this many mistakes: fastcnn on digits 0-4
# made none, the fit ran to T = 0.05 and every probability to ~1 (unseen digits 5-9: 9 % rejected below 0.99,
# against 90 % below 0.8 at T = 1, 92 % of seen digits kept).
CALIBRATION_MIN_ERRORS = 10
SELECTIVE_CURVE_POINTS = 256  # coverage-accuracy points a checkpoint keeps (a few KB in it and in ONNX metadata)
SELECTIVE_MIN_KEPT = 20  # --target-accuracy never picks a threshold that keeps fewer validation images than this
REPORT_TARGET_ACCURACIES = (0.9, 0.95, 0.99)  # the report marks the thresholds validation picks for these

# -- the speed run (--recipe speedrun: training/speedrun.py) ----------------------------------------------------


@dataclass(frozen=True)
class SpeedConfig:
    """Every knob of a speed run, at the `fast` preset's values (airbench94's: 94 % on CIFAR-10 in about 10
    epochs on a GPU). LR and weight decay are in airbench's units (per 1024 summed examples)."""

    # schedule and optimizer
    epochs: float = 9.9
    batch_size: int = 1024
    lr: float = 11.5
    momentum: float = 0.85
    weight_decay: float = 0.0153
    bias_scaler: float = 64.0  # BatchNorm biases learn this much faster, with this much less decay
    label_smoothing: float = 0.2
    warmup_frac: float = 0.23  # LR rises linearly from lr_start to 1 over this share of steps, then falls
    lr_start: float = 0.2
    lr_end: float = 0.07
    # lookahead: every `lookahead_every` steps the weights are pulled to an EMA (decay grows like progress^3)
    lookahead: bool = True
    lookahead_every: int = 5
    lookahead_decay: float = 0.95
    # network
    widths: tuple[int, int, int] = (64, 256, 256)
    depth: int = 2  # convs per block; 3 adds a residual over the last two
    bn_momentum: float = 0.6  # airbench sense: share of the old running statistics kept
    head_scale: float = 1 / 9
    whiten_kernel: int = 2
    whiten_eps: float = 5e-4
    whiten_images: int = 5000
    whiten_bias_epochs: float = 3.0  # the whitening layer's bias trains this long, then stops
    # data augmentation (on whole epochs, on the device) and test-time augmentation
    flip: str = "alternate"  # alternate | random | none
    translate: int = 2
    cutout: int = 0
    tta_level: int = 2  # 0 none, 1 flip, 2 flip + one-pixel translations
    # machine
    precision: str = "auto"  # auto (bf16 on CUDA, and on CPUs with native bf16) | fp32 | bf16 | fp16
    fp16_init_scale: float = 256.0  # the summed loss already gives large gradients
    channels_last: bool = True
    compile: bool = False
    compile_mode: str | None = None
    eval_batch_size: int = 2000
    log_every: int = 0  # > 0: record the training loss every this many steps (costs a sync each time)
    seed: int = 0

    def replace(self, **changes: Any) -> SpeedConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON data (config.yaml's extra.speedrun_config, reports)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SpeedConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# `long`: airbench96's direction, wider and deeper for longer, with cutout (a GPU recipe)
SPEED_PRESETS: dict[str, SpeedConfig] = {
    "fast": SpeedConfig(),
    "long": SpeedConfig(epochs=40.0, widths=(128, 512, 512), depth=3, lr=9.0, translate=4, cutout=12),
}
SPEED_PRESET_MODELS = {"fast": "speednet", "long": "speednet_long"}
SPEED_EVAL_BATCHES = 8  # a speed run evaluates in batches of at most this many training batches (and the preset's)
