"""The check that tests/test_timm_floor.py runs under two timm versions (one of them in a subprocess)."""
from __future__ import annotations

from pathlib import Path

import timm
import torch

from endovit.models.mae import create_mae
from endovit.recipe import parse_recipe
from endovit.weights import export_info, export_model


def train_export_load(out: Path) -> dict:
    """A seeded tiny MAE's loss on fixed input and mask, its export, and that export loaded by timm."""
    recipe = parse_recipe(["--recipe", "demo", "--train_data", str(out), "--model", "mae_vit_tiny_patch16",
                           "--img_size", "32,48", "--mean", "0.41,0.27,0.2", "--std", "0.26,0.22,0.19"])
    torch.manual_seed(0)
    mae = create_mae("mae_vit_tiny_patch16", img_size=(32, 48)).eval()
    images, noise = torch.randn(2, 3, 32, 48), torch.rand(2, mae.num_patches)
    with torch.no_grad():
        loss = mae(images, 0.75, noise)[0]
    export_model(mae, out, export_info(recipe.to_dict(), mae, step=7, val_loss=None))
    vit = timm.create_model(f"local-dir:{out}/timm", pretrained=True).eval()
    with torch.no_grad():
        features = vit.forward_features(images)
    return {"version": timm.__version__, "loss": loss, "features": features}
