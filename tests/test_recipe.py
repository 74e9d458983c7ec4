"""Recipes: YAML + explicit-value CLI overrides, EndoViT's published values, clear errors."""
from __future__ import annotations

import re

import pytest

from endovit.recipe import RecipeError, parse_recipe


def test_endovit_seg_matches_the_published_pretraining_config():
    recipe = parse_recipe(["--train_data", "frames"])
    assert recipe.model == "mae_vit_base_patch16"
    assert recipe.init_from.endswith("mae_pretrain_vit_base_full.pth")
    assert (recipe.batch_size, recipe.epochs, recipe.warmup_epochs) == (256, 15, 1.0)
    assert recipe.blr * recipe.batch_size / 256 == pytest.approx(1.5e-3) and recipe.lr is None
    assert (recipe.min_lr, recipe.weight_decay, recipe.layer_decay, recipe.mask_ratio) == (1e-6, 0.05, 0.75, 0.75)
    assert recipe.norm_pix_loss is False
    assert recipe.mean == [0.3464, 0.2280, 0.2228] and recipe.std == [0.2520, 0.2128, 0.2093]
    assert (recipe.seed, recipe.val_every_steps, recipe.img_size, recipe.crop_scale) == (1665, 500, [224, 224],
                                                                                          [0.6, 1.0])
    assert (recipe.swa, recipe.swa_start_epoch, recipe.swa_every_steps, recipe.swa_lr) == (True, 10, 500, 4e-4)
    # what EndoViT's code does beyond its config (docs/differences.md)
    assert (recipe.swa_schedule, recipe.best_swa_from_epoch, recipe.val_schedule, recipe.reshuffle_each_epoch) == (
        "endovit", 11, "epoch", False)


def test_cli_overrides_take_explicit_values():
    recipe = parse_recipe(["--recipe", "demo", "--train_data", "x", "--norm_pix_loss", "true", "--img_size",
                           "224,384", "--lr", "none", "--clip_grad", "1.0", "--mean", "[0.5, 0.5, 0.5]"])
    assert recipe.norm_pix_loss is True
    assert recipe.img_size == [224, 384]
    assert recipe.lr is None and recipe.clip_grad == 1.0
    assert recipe.mean == [0.5, 0.5, 0.5]
    assert parse_recipe(["--recipe", "demo", "--train_data", "x", "--img_size", "64"]).img_size == [64, 64]


def test_probe_settings_without_probe_data_are_named_as_unused(tmp_path):
    flags = ["--recipe", "demo", "--train_data", "x", "--probe_kind", "both", "--probe_frame_step", "4"]
    assert parse_recipe(flags).unused_probe_settings() == ["probe_kind", "probe_frame_step"]
    assert parse_recipe([*flags, "--probe_data", str(tmp_path)]).unused_probe_settings() == []
    assert parse_recipe(["--recipe", "demo", "--train_data", "x"]).unused_probe_settings() == []


def test_bare_switch_is_rejected(capsys):
    with pytest.raises(SystemExit):
        parse_recipe(["--train_data", "x", "--norm_pix_loss"])
    assert "expected one argument" in capsys.readouterr().err


def test_recipe_file_by_path_and_unknown_key(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("model: mae_vit_large_patch16\nmin_lr: 1e-6\ntrain_data: /data\n")
    recipe = parse_recipe(["--recipe", str(good)])
    assert recipe.model == "mae_vit_large_patch16" and recipe.min_lr == 1e-6
    bad = tmp_path / "typo.yaml"
    bad.write_text("mask_ration: 0.5\n")
    with pytest.raises(RecipeError, match=r"typo.yaml: unknown key 'mask_ration' \(did you mean 'mask_ratio'\?\)"):
        parse_recipe(["--recipe", str(bad)])


@pytest.mark.parametrize("flags, message", [
    (["--mask_ratio", "1.0"], "--mask_ratio 1.0: must be strictly between 0 and 1"),
    (["--img_size", "200"], "--img_size [200, 200]: each side must be divisible by the patch size 16"),
    (["--model", "vit_giant"], "--model 'vit_giant': unknown model"),
    (["--warmup_epochs", "20"], "--warmup_epochs 20.0: must be in [0, epochs=15)"),
    (["--mixed_precision", "fp8"], "--mixed_precision 'fp8': choose auto, no, fp16 or bf16"),
    (["--num_workers", "999"], "--num_workers 999: at most 256"),
    (["--img_size", "8192"], "--img_size [8192, 8192]: at most 4096 pixels a side"),
    (["--num_recon_images", "100"], "--num_recon_images 100: at most 64"),
    (["--val_batch_size", "-1"], "--val_batch_size -1: must not be negative"),
    (["--ddp_comm_hook", "int8"], "--ddp_comm_hook 'int8': choose none, bf16 or fp16"),
    (["--probe_best_metric", "knn_avg_map"], "--probe_best_metric 'knn_avg_map': needs --probe_data"),
    (["--probe_data", "p", "--probe_best_metric", "knn_map"], "--probe_best_metric 'knn_map': name a probe metric"),
    (["--probe_data", "p", "--probe_best_metric", "linear_avg_acc"],
     "--probe_best_metric 'linear_avg_acc': is not measured with --probe_kind knn"),
    # values that trained without complaint, uphill or into a blow-up
    (["--clip_grad", "-1"], "--clip_grad -1.0: must be a positive gradient norm, or none"),
    (["--min_lr", "0.002"], "--min_lr 0.002: is above the peak lr 0.0015: the cosine schedule would climb"),
    (["--layer_decay", "-0.5"], "--layer_decay -0.5: must be in (0, 1]"),
    (["--mean", "88,58,57", "--std", "64,54,53"], "--mean [88, 58, 57]: is in [0, 1] units"),
    (["--std", "64,54,53"], "--std [64, 54, 53]: is in [0, 1] units"),
    (["--lr", "nan"], "--lr nan: must be a finite number"),
    (["--weight_decay", "inf"], "--weight_decay inf: must be a finite number"),
    (["--std", "a,b,c"], "--std ['a', 'b', 'c']: give numbers"),
    (["--swa_lr", "-1"], "--swa_lr -1.0: must not be negative"),
    (["--swa_schedule", "exact"], "--swa_schedule 'exact': choose smooth or endovit"),
    (["--val_schedule", "step"], "--val_schedule 'step': choose global or epoch"),
])
def test_bad_values_name_the_flag(flags, message):
    with pytest.raises(RecipeError) as err:
        parse_recipe(["--train_data", "x", *flags])
    assert message in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("mean: 0.5\n", "--mean 0.5: must be a list"),
    ("batch_size: 4.5\n", "--batch_size 4.5: must be a whole number"),
    ("lr: [1]\n", "--lr [1]: must be a number, or none"),
    ("swa: 1\n", "--swa 1: must be true or false"),
    ("img_size: 96.5\n", "--img_size 96.5: must be a list"),
    ("std: [a, b, c]\n", "--std ['a', 'b', 'c']: give numbers"),
    ("lr: [1\nepochs: 3\n", "bad.yaml is not valid YAML at line 2, column 7: expected ',' or ']', but got ':'"),
])
def test_a_recipe_file_value_of_the_wrong_type_is_one_line_naming_the_key(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(RecipeError) as err:
        parse_recipe(["--recipe", str(tmp_path / "bad.yaml"), "--train_data", "x"])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_recipe_name_lists_the_shipped_ones():
    with pytest.raises(RecipeError, match="one of demo, endovit_seg"):
        parse_recipe(["--recipe", "endovit_segg"])


def test_help_documents_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit):
        parse_recipe(["--help"])
    text = capsys.readouterr().out
    for name in ("train_data", "mask_ratio", "probe_every_steps", "dist_timeout", "resume"):
        block = re.search(rf"--{name} VALUE(.*?)(?=\n  --|\n\n)", text, re.S).group(1)
        assert len(block.split()) > 3 and "(default: " in block, name
    assert "speed and devices:" in text and "downstream probe:" in text


def test_misspelt_flag_is_one_line_with_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_recipe(["--train_data", "x", "--mask_ratoi", "0.5"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err == "error: unknown flag --mask_ratoi (did you mean --mask_ratio?); see --help for every flag\n"


@pytest.mark.parametrize("environ, flags, expected, origin", [
    ({}, [], "auto", None),
    ({"ACCELERATE_MIXED_PRECISION": "bf16"}, [], "bf16", "accelerate's mixed_precision"),
    ({"ACCELERATE_MIXED_PRECISION": "no"}, [], "auto", None),
    ({"ACCELERATE_MIXED_PRECISION": "bf16"}, ["--mixed_precision", "no"], "no", "command line"),
])
def test_precision_precedence(environ, flags, expected, origin):
    from endovit.recipe import build_parser, recipe_from_args

    recipe = recipe_from_args(build_parser().parse_args(["--train_data", "x", *flags]), environ=environ)
    assert recipe.mixed_precision == expected
    assert recipe.origin.get("mixed_precision") == origin
