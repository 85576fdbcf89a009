"""The photo path: aspect kept in the cache, crops inside the photo, exact replay, one preprocessing for
evaluate / predict / serve / ONNX, and the cached-feature head equal to training the frozen network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from helpers import PHOTO_SHAPES as SHAPES
from helpers import make_photo_folder
from imgclf.config import TrainConfig
from imgclf.data import load_splits
from imgclf.data.imageset import ImageSet
from imgclf.data.loaders import PhotoLoader, make_loader
from imgclf.data.photos import PhotoSet, Preprocess, train_transform, working_side
from imgclf.evaluation.metrics import predict_logits
from imgclf.inference.predictor import Predictor
from imgclf.models import build_model
from imgclf.models.checkpoint import load_checkpoint, model_from_checkpoint
from imgclf.training.callbacks import Callback
from imgclf.training.staged import extract_features, train_head


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_photo_folder(tmp_path_factory.mktemp("photos") / "set")


def test_cache_keeps_the_aspect_ratio(photo_folder: Path) -> None:
    splits = load_splits(str(photo_folder), image_size=24)
    assert isinstance(splits.train, PhotoSet) and splits.train.image_size == 24
    side = working_side(24)  # 28: a crop of 24 is 0.875 of it
    shapes = {a.shape for a in splits.train.images + splits.test.images}
    for w, h in SHAPES:
        scale = side / min(w, h)
        assert (max(side, round(h * scale)), max(side, round(w * scale)), 3) in shapes
    again = load_splits(str(photo_folder), image_size=24)  # from the cache: the same ragged arrays
    assert all(np.array_equal(a, b) for a, b in zip(splits.train.images, again.train.images, strict=True))


def test_small_squares_keep_the_fast_path(image_folder: Path) -> None:
    assert isinstance(load_splits(str(image_folder)).train, ImageSet)


def test_random_resized_crops_stay_inside_the_photo() -> None:
    red = np.zeros((30, 70, 3), dtype=np.uint8)
    red[..., 0] = 200
    data = PhotoSet([red] * 16, np.zeros(16, dtype=np.int64), ["a", "b"], 24)
    loader = PhotoLoader(data, 8, preprocess=Preprocess(24), augment=train_transform(24, "none", 0.08),
                         shuffle=True, seed=1)
    for x, _ in loader:  # any pixel from outside the photo would be a fill value, not this red
        assert x.shape == (8, 3, 24, 24)
        assert torch.allclose(x[:, 0], torch.full_like(x[:, 0], 200 / 255), atol=1e-6)
        assert torch.all(x[:, 1:] == 0)


def test_augmentation_replays_exactly_after_resume_and_across_workers(photo_folder: Path) -> None:
    memory = load_splits(str(photo_folder), image_size=24, stream=False)
    files = load_splits(str(photo_folder), image_size=24, stream=True)
    kwargs = dict(preprocess=Preprocess(24), augment=train_transform(24), shuffle=True, seed=7)
    first = PhotoLoader(memory.train, 8, **kwargs)
    first.set_epoch(3)
    a = list(first)
    resumed = PhotoLoader(memory.train, 8, **kwargs)  # a fresh process resuming at epoch 3
    resumed.set_epoch(3)
    streamed = PhotoLoader(files.train, 8, num_workers=2, **kwargs)  # decoded from disk by two workers
    streamed.set_epoch(3)
    for (xa, ya), (xb, yb), (xc, yc) in zip(a, resumed, streamed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ya, yc)
        assert torch.allclose(xa, xc, atol=1 / 255)  # stream decodes from the file, memory from the cache
    first.set_epoch(4)
    assert not torch.equal(a[0][0], next(iter(first))[0])  # another epoch draws other views


@pytest.fixture(scope="module")
def photo_checkpoint(photo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imgclf.training.run import train

    out = tmp_path_factory.mktemp("photo-run") / "run"
    train(TrainConfig(data=str(photo_folder), model="tiny", epochs=2, batch_size=8, image_size=24, quiet=True,
                      device="cpu", resize="pad", out=str(out)))
    return out / "checkpoints" / "last.pt"


def test_one_preprocessing_for_evaluate_predict_serve_and_onnx(photo_checkpoint: Path, photo_folder: Path,
                                                                tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from imgclf.inference.export import export_onnx
    from imgclf.inference.predictor import load_onnx_predictor
    from imgclf.inference.server import create_app

    ckpt = load_checkpoint(photo_checkpoint)
    assert ckpt["preprocess"] == {"input_size": 24, "resize": "pad", "crop_fraction": 0.875}
    splits = load_splits(str(photo_folder), image_size=24)
    loader = make_loader(splits.test, 4, "cpu", train=False, preprocess=Preprocess.from_checkpoint(ckpt),
                         channels_last=False)
    logits, _ = predict_logits(model_from_checkpoint(ckpt), loader)
    evaluated = torch.softmax(logits, 1).numpy()

    files = sorted((photo_folder / "test").glob("*/*.jpg"))  # the order the data layer lists them in
    predictor = Predictor.load(str(photo_checkpoint), device="cpu")
    torch_probs = predictor.probabilities(predictor.preprocess(files))
    export_onnx(photo_checkpoint, tmp_path / "m.onnx")
    onnx = load_onnx_predictor(tmp_path / "m.onnx")
    assert onnx.preprocessing == Preprocess(24, "pad", 0.875)  # travelled in the ONNX metadata
    onnx_probs = onnx.probabilities(onnx.preprocess(files))
    np.testing.assert_allclose(torch_probs, evaluated, atol=1e-4)
    np.testing.assert_allclose(onnx_probs, evaluated, atol=1e-4)

    with TestClient(create_app(predictor)) as client:  # the context runs the app's startup (its batcher)
        served = client.post("/predict", files={"file": ("a.jpg", files[0].read_bytes(), "image/jpeg")})
    assert served.status_code == 200, served.text
    top = served.json()["top_k"][0]
    assert top["probability"] == pytest.approx(float(evaluated[0].max()), abs=1e-4)


def test_cached_features_train_the_same_head_as_the_frozen_network() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", 3).eval()
    images = torch.rand(40, 3, 16, 16)
    labels = torch.randint(0, 3, (40,))
    feats, _ = extract_features(model, [(images[:24], labels[:24]), (images[24:], labels[24:])], None)
    cfg = TrainConfig(weight_decay=0.01, label_smoothing=0.1)
    cached_head, direct_head = build_model("tiny", 3).head, build_model("tiny", 3).head
    direct_head.load_state_dict(cached_head.state_dict())
    train_head(cached_head, lambda idx: feats[idx], labels, cfg, epochs=5, seed=3)
    train_head(direct_head, lambda idx: model.embed(images[idx]).detach(), labels, cfg, epochs=5, seed=3)
    for a, b in zip(cached_head.parameters(), direct_head.parameters(), strict=True):
        assert not torch.equal(a, torch.zeros_like(a)) or a.ndim == 1
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


class _StopAfterFirstEpoch(Callback):
    def on_epoch_end(self, trainer: Any, row: dict[str, Any]) -> None:
        trainer.stop_reason = "stopped for the test"


def test_staged_fine_tuning_on_photos_resumes_bitwise(photo_folder: Path, tmp_path: Path) -> None:
    """Head on cached features, then the top group with per-image augmentation: 2 epochs straight equal
    1 epoch + resume, bit for bit, and the plan is recorded in config.yaml and metrics.json."""
    from imgclf.training.run import train

    weights = tmp_path / "start.pt"
    torch.save(build_model("tiny", 3).state_dict(), weights)
    base = TrainConfig(data=str(photo_folder), model="tiny", weights=str(weights), epochs=2, batch_size=8,
                       image_size=24, quiet=True, device="cpu", unfreeze_groups=1, head_epochs=3)
    straight = train(base.replace(out=str(tmp_path / "a")))
    train(base.replace(out=str(tmp_path / "b")), extra_callbacks=[_StopAfterFirstEpoch()])
    train(base, resume=str(tmp_path / "b" / "checkpoints" / "last.pt"))
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.metrics["staged"]["unfreeze_groups"] == 1 and straight.metrics["staged"]["head"]["views"] == 1
    assert "strategy: staged" in (tmp_path / "a" / "config.yaml").read_text()


def test_streamed_training_skips_and_names_an_unreadable_file(photo_folder: Path, tmp_path: Path,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    import shutil

    from imgclf.training.run import train

    root = tmp_path / "data"
    shutil.copytree(photo_folder, root)
    (root / "train" / "class_1" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    result = train(TrainConfig(data=str(root), model="tiny", epochs=1, batch_size=1, image_size=24, quiet=True,
                               device="cpu", loader="stream", num_workers=0, out=str(tmp_path / "run")))
    assert result.metrics["epochs_run"] == 1 and result.metrics["test_accuracy"] is not None
    err = capfd.readouterr().err
    assert "skipped" in err and "broken.jpg" in err and "Traceback" not in err


def test_head_phase_cut_by_the_budget_keeps_what_it_saw() -> None:
    """On a machine too slow for the whole clean pass the features stop when told (the clean view comes
    shuffled, so the part seen still spans the classes)."""
    from imgclf.models import build_model

    model = build_model("tiny", 3)
    batches = [(torch.rand(4, 3, 16, 16), torch.arange(4) % 3) for _ in range(50)]
    seen: list[int] = []
    feats, labels = extract_features(model, batches, None, stop=lambda images, seconds: seen.append(images) or
                                     images >= 12)
    assert len(feats) == len(labels) == 12 and seen == [4, 8, 12]
    feats, labels = extract_features(model, batches, None)
    assert len(feats) == 200


def test_the_head_phase_takes_most_of_the_budget_when_no_layer_could_be_unfrozen() -> None:
    """A frozen forward pass bounds every training step's rate from above: when at that rate the rest of the
    budget cannot pass MIN_TOP_EPOCHS epochs, no depth fits and the head phase keeps caching features."""
    from imgclf.training.staged import HEAD_ONLY_SHARE, MAX_HEAD_SHARE, MIN_TOP_EPOCHS, head_share

    # CIFAR-10 through Lite0 at 224 px on 2 cores: 118 img/s, 45,000 images, 240 s
    assert head_share(118.0, 45_000, 240.0) == HEAD_ONLY_SHARE > MAX_HEAD_SHARE
    # flowers5 through Lite2 at 260 px: 40 img/s, 900 images, 180 s (the top phase can unfreeze)
    assert head_share(40.0, 900, 180.0) == MAX_HEAD_SHARE
    fits = MIN_TOP_EPOCHS * 1000 / ((1 - MAX_HEAD_SHARE) * 100.0)  # the rate at which 1,000 images just fit 100 s
    assert head_share(fits, 1000, 100.0) == MAX_HEAD_SHARE
    assert head_share(fits * 0.99, 1000, 100.0) == HEAD_ONLY_SHARE


def test_head_curve_points_rise_with_the_features_the_head_saw() -> None:
    """The time-curve points of the head phase: heads on 1/8, 1/4 and 1/2 of the features, each charged the
    extraction of what it saw, score better with more; the head itself is left untouched."""
    from torch import nn

    from imgclf.training.staged import HEAD_CURVE_SHARES, head_curve

    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 32, generator=gen)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % 5
        return centres[labels] + 2.0 * torch.randn(n, 32, generator=gen), labels

    train_set, val_set = sample(1600), sample(1000)
    head = nn.Sequential(nn.Dropout(0.0), nn.Linear(32, 5))
    before = {k: v.clone() for k, v in head.state_dict().items()}
    points = head_curve(head, TrainConfig(weight_decay=0.0, label_smoothing=0.0, head_epochs=3), train_set, val_set,
                        rate=1000.0, criterion=nn.CrossEntropyLoss())
    assert len(points) == len(HEAD_CURVE_SHARES)
    seconds, accuracy = zip(*points, strict=True)
    assert all(t >= share * 1.6 for t, share in zip(seconds, HEAD_CURVE_SHARES, strict=True))  # 1,600 at 1,000/s
    assert seconds[0] < seconds[1] < seconds[2]
    assert accuracy[2] > accuracy[0] + 0.05 and 0.2 < accuracy[0] < 1.0, points
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())


def test_a_budgeted_staged_run_leaves_head_points_on_its_time_curve(photo_folder: Path, tmp_path: Path) -> None:
    """Under a time budget the head phase's points (three shares and the trained head, on head-phase seconds)
    come first in the run's time curve, before the epochs on the budget's clock."""
    from imgclf.reporting.curves import head_points, run_points, time_series
    from imgclf.training.run import train

    weights = tmp_path / "start.pt"
    torch.save(build_model("tiny", 3).state_dict(), weights)
    result = train(TrainConfig(data=str(photo_folder), model="tiny", weights=str(weights), time_budget=8.0,
                               epochs=2, batch_size=8, image_size=24, quiet=True, device="cpu", unfreeze_groups=1,
                               head_epochs=3, out=str(tmp_path / "run")))
    curve = result.metrics["staged"]["head"]["curve"]
    assert len(curve) == 4 and all(0.0 <= acc <= 1.0 for _, acc in curve)
    assert curve[-1][0] <= result.metrics["staged"]["seconds"]
    assert [list(p) for p in head_points(tmp_path / "run")] == curve
    epochs = run_points(tmp_path / "run")
    assert len(epochs) == result.metrics["epochs_run"] and min(t for t, _ in epochs) > curve[-1][0]
    # the time curve takes them where the epochs alone are too few to fit (here 2): they come first
    summary = {"variant": "finetune", "run_names": ["run"]}
    (tmp_path / "runs").mkdir()
    (tmp_path / "run").rename(tmp_path / "runs" / "run")
    assert time_series(tmp_path, [summary])["finetune"] == [[tuple(p) for p in curve] + epochs]
