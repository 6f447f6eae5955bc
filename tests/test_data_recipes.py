"""The recipes' data sections: a round is one pass, and crops come from a canvas at least as large
as what `shards build` stores by default (Ark crops RandomResizedCrop from the full image)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ark_dist.config import load
from shards.cli import parser

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = ["ark6.yaml", "ark_plus.yaml"]


def _default_max_side() -> int:
    """`shards build`'s default stored side, read from its command line."""
    return parser().parse_args(["build", "--source", "chexpert", "--root", "raw", "--out", "store"]).max_side


@pytest.mark.parametrize("name", RECIPES)
def test_a_recipe_round_is_one_pass(name):
    assert load(CONFIGS / name).data.sampling == "epoch"


@pytest.mark.parametrize("name", RECIPES)
def test_a_recipe_crops_from_at_least_the_default_stored_size_at_its_input(name):
    """Ark-6 (224 input): the canvas is at least the default --max-side. Ark+ keeps the same ratio
    of canvas to input, so its smallest crops are upsampled no more than Ark-6's."""
    views = load(CONFIGS / name).data.views
    ratio = _default_max_side() / 224
    assert views.load_size >= ratio * views.image_size, (views.load_size, views.image_size)
    assert f"--max-side {views.load_size}" in (CONFIGS / name).read_text(), "the recipe names the store it expects"
