"""Shipped recipes (listed, applied under the user's flags, unknown names refused) and option checks."""

from __future__ import annotations

import argparse

import pytest

from helpers import imgclf
from imgclf.cli import add_train_options, config_from_args
from imgclf.config import list_recipes


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_options(parser)
    return parser.parse_args(list(argv))


def test_every_recipe_is_listed_and_loads() -> None:
    recipes = list_recipes()
    assert {"finetune", "finetune-fast", "photos-scratch"} <= set(recipes)
    for name, summary in recipes.items():
        assert summary, f"recipe {name} has no description line"
        cfg = config_from_args(_parse("--recipe", name))
        assert cfg.extra["recipe"] == name


def test_a_recipe_yields_to_the_users_flags() -> None:
    cfg = config_from_args(_parse("--recipe", "finetune", "--model", "efficientnet_lite0"))
    assert (cfg.model, cfg.pretrained) == ("efficientnet_lite0", True)


@pytest.mark.parametrize(("args", "expected"), [(["recipes"], "finetune-fast"),
                                                (["train", "--recipe", "nope", "--data", "digits"], "available:")])
def test_recipes_command_and_unknown_recipe(args: list[str], expected: str) -> None:
    result = imgclf(*args)
    out = result.stdout if result.returncode == 0 else result.stderr
    assert expected in out
    assert result.returncode == (0 if args == ["recipes"] else 2)
    if result.returncode:
        assert out.count("\n") == 1 and "Traceback" not in out


@pytest.mark.parametrize(("args", "expected"), [
    (["train", "--data", "digits", "--optimizer", "adam"], "optimizer must be one of adamw, sgd, got 'adam'"),
    (["train", "--data", "digits", "--epochs", "-1"], "epochs must be at least 1, got -1"),
    (["train", "--data", "digits", "--resize", "fill"], "resize must be one of crop, pad, squash, got 'fill'"),
])
def test_bad_choices_name_only_the_bad_option(args: list[str], expected: str) -> None:
    result = imgclf(*args)
    assert result.returncode == 2 and expected in result.stderr and result.stderr.count("\n") == 1


def test_version() -> None:
    result = imgclf("--version")
    assert result.returncode == 0 and result.stdout.startswith("imgclf ")
