"""The shipped recipes (YAML), found by name with ``--recipe NAME``; ``endovit.recipe`` checks what they say."""
from __future__ import annotations

from pathlib import Path

import yaml

__all__ = ["RECIPES_DIR", "ENDOVIT_MEAN", "ENDOVIT_STD", "shipped_recipe_names", "shipped_recipe"]

RECIPES_DIR = Path(__file__).parent
# EndoViT's per-channel statistics of its pretraining frames (R, G, B in [0, 1]): the recipes' default mean/std
ENDOVIT_MEAN = [0.3464, 0.2280, 0.2228]
ENDOVIT_STD = [0.2520, 0.2128, 0.2093]


def shipped_recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def shipped_recipe(name: str) -> dict:
    """A shipped recipe's keys as written (unchecked): for code below the recipe that needs one of its values."""
    return yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text()) or {}
