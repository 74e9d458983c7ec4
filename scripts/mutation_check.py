"""Mutation check: does the test suite catch realistic one-line bugs?

    python scripts/mutation_check.py                 # every mutation; exit 1 when the score is under --min_score
    python scripts/mutation_check.py --list          # the mutations, checked against the code, nothing run
    python scripts/mutation_check.py --only swa lr   # those whose name contains one of the words

Each mutation is (name, file, exact original snippet, mutated snippet, the tests to run). The tracked files (and
untracked ones git does not ignore) are copied into a temporary folder; there, one mutation at a time is applied,
its tests run (``python -m pytest -x`` with ``PYTHONPATH`` the copy) and the file put back. A mutation is caught when
its tests fail. The working tree is never modified.

Exit status: 0 when the score (caught / mutations) is at least ``--min_score``; 1 when under it; 2 when the list is
out of sync with the code (an original snippet not found exactly once, a mutation that does not compile) or the
unmutated tests do not pass (the baseline), so nothing a mutation does could be told apart.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    original: str
    mutated: str
    tests: tuple[str, ...]  # pytest arguments: files, node ids, -k expressions
    issue: bool = False  # one of the bugs of issue 15 that the suite once let through


LOOP = "tests/test_loop.py"
RESUME = "tests/test_resume.py"
TWO = "tests/test_distributed.py"
PICTURE = "tests/test_picture.py"
SWA = "tests/test_swa_endovit.py"

MUTATIONS = [
    # --- the step loop (engine) ---------------------------------------------------------------------------------
    Mutation("resume-skip-without-accumulation", "endovit/engine.py",
             "done_in_epoch = (step - epoch * schedule.steps_per_epoch) * recipe.grad_accum_steps",
             "done_in_epoch = (step - epoch * schedule.steps_per_epoch)",
             (LOOP, "-k", "resume"), issue=True),
    Mutation("noise-seed-without-process", "endovit/engine.py",
             "sample_seed(recipe.seed, step, micro_steps, accelerator.process_index)",
             "sample_seed(recipe.seed, step, micro_steps)",
             (TWO, "-k", "masks"), issue=True),
    Mutation("noise-seed-without-micro-step", "endovit/engine.py",
             "sample_seed(recipe.seed, step, micro_steps, accelerator.process_index)",
             "sample_seed(recipe.seed, step, 0, accelerator.process_index)",
             (LOOP, "-k", "masks")),
    Mutation("lr-of-the-next-step", "endovit/engine.py",
             "set_lr(run.optimizer, lambda scale: schedule.lr_at(step, scale))",
             "set_lr(run.optimizer, lambda scale: schedule.lr_at(step + 1, scale))",
             (LOOP, "-k", "lr_applied")),
    Mutation("swa-update-one-step-late", "endovit/engine.py",
             "if run.swa_model is not None and schedule.swa_average_after(step):",
             "if run.swa_model is not None and schedule.swa_average_after(step - 1):",
             (LOOP, "-k", "swa_averages")),
    Mutation("sampler-epoch-never-set", "endovit/engine.py",
             "run.train_loader.set_epoch(epoch)",
             "run.train_loader.set_epoch(0)",
             (TWO, "-k", "batch_is_split")),
    Mutation("no-save-at-the-last-step", "endovit/engine.py",
             "if step % recipe.save_every_steps == 0 or step == schedule.last_step or stopped:",
             "if step % recipe.save_every_steps == 0 or stopped:",
             (LOOP, "-k", "resume")),
    Mutation("gradients-never-zeroed", "endovit/engine.py",
             "    optimizer.zero_grad(set_to_none=True)\n    return loss.detach()",
             "    return loss.detach()",
             (LOOP, "-k", "resume")),
    # --- the run: schedule, signature, loaders (trainer) -----------------------------------------------------------
    Mutation("schedule-without-swa", "endovit/trainer.py",
             "swa=r.swa, swa_start_epoch=r.swa_start_epoch,",
             "swa=False, swa_start_epoch=r.swa_start_epoch,",
             (LOOP, "-k", "lr_applied"), issue=True),
    Mutation("swa-starts-an-epoch-late", "endovit/trainer.py",
             "return epoch >= self.recipe.swa_start_epoch and (",
             "return epoch > self.recipe.swa_start_epoch and (",
             (LOOP, "-k", "swa_averages"), issue=True),
    Mutation("swa-not-at-epoch-end", "endovit/trainer.py",
             "epoch_step % self.recipe.swa_every_steps == 0 or epoch_step == self.steps_per_epoch)",
             "epoch_step % self.recipe.swa_every_steps == 0)",
             (LOOP, "-k", "swa_averages")),
    Mutation("endovit-swa-averages-after-the-step", "endovit/trainer.py",
             'return self.recipe.swa_schedule == "endovit" and self.swa_update_due(step + 1)',
             'return self.recipe.swa_schedule == "endovit" and self.swa_update_due(step)',
             (SWA, "-k", "recipe_lr")),
    Mutation("endovit-validation-not-at-epoch-ends", "endovit/trainer.py",
             "return epoch_step % every == 0 or epoch_step == self.steps_per_epoch",
             "return epoch_step % every == 0",
             (SWA,)),
    Mutation("endovit-swa-scale-not-compounded", "endovit/swa.py",
             "lr = (swa_lr * alpha + start * (1 - alpha)) * lr_scale",
             "lr = (swa_lr * alpha + start / lr_scale * (1 - alpha)) * lr_scale",
             (SWA, "-k", "recipe_lr")),
    Mutation("endovit-swa-lr-at-every-step", "endovit/swa.py",
             "in_epoch = (i + 1) // swa_every_steps + (",
             "in_epoch = (i + 1) / swa_every_steps + (",
             (SWA, "-k", "recipe_lr")),
    Mutation("best-swa-counts-every-epoch", "endovit/swa.py",
             "return (step - 1) // steps_per_epoch >= best_swa_from_epoch",
             "return True",
             (SWA, "-k", "step_loop")),
    Mutation("best-swa-not-restored", "endovit/saver.py",
             'BESTS = ("best", "best_probe", "best_swa")',
             'BESTS = ("best", "best_probe")',
             (SWA, "-k", "step_loop")),
    Mutation("order-reshuffled-anyway", "endovit/data/mixing.py",
             "sample_seed(self.seed, self.epoch if self.reshuffle else 0)",
             "sample_seed(self.seed, self.epoch)",
             ("tests/test_data.py", "-k", "reshuffling")),
    Mutation("signature-without-steps-per-epoch", "endovit/trainer.py",
             ',\n                            "steps_per_epoch": schedule.steps_per_epoch})',
             "})",
             (RESUME,), issue=True),
    Mutation("signature-without-seed", "endovit/trainer.py",
             '"seed": recipe.seed, "processes"',
             '"processes"',
             (RESUME, "-k", "seed")),
    Mutation("resume-never-checked", "endovit/saver.py",
             "        check_resumable(folder, self.run_signature, self.manifest)\n",
             "",
             (RESUME, "-k", "swa")),
    Mutation("best-probe-counts-the-init", "endovit/saver.py",
             "        if not name or step == 0:\n",
             "        if not name:\n",
             ("tests/test_saver.py", "-k", "best_probe")),
    Mutation("best-probe-moves-on-a-tie", "endovit/saver.py",
             "if value > self.progress.best_probe and",
             "if value >= self.progress.best_probe and",
             ("tests/test_saver.py", "-k", "best_probe")),
    # --- probes (features across processes, frame step, size check, settings); weights that do not fit ---------------
    Mutation("probe-features-keep-the-padding", "endovit/probes/features.py",
             "return _split_pools(accelerator.gather(torch.cat(mine))[:len(pixels)])",
             "return _split_pools(accelerator.gather(torch.cat(mine)))",
             (TWO, "-k", "probe")),
    Mutation("probe-frame-step-over-all-videos", "endovit/probes/probe.py",
             "        if seen[videos[row]] % step == 0:",
             "        if len(kept) * step == sum(seen.values()):",
             ("tests/test_probe.py", "-k", "frame_step")),
    Mutation("probe-size-step-rounds-down", "endovit/probes/probe.py",
             "step = settings.frame_step * -(-needed // budget)",
             "step = settings.frame_step * (needed // budget)",
             ("tests/test_probe.py", "-k", "too_big")),
    Mutation("probe-decode-draws-from-the-global-rng", "endovit/probes/probe.py",
             "    with torch.random.fork_rng(devices=[]):\n",
             "    if True:\n",
             ("tests/test_probe.py", "-k", "rng")),
    Mutation("probe-recipe-drops-the-frame-numbering", "endovit/probes/probe.py",
             "return cls(**{f.name: getattr(recipe, prefix + f.name) for f in fields(cls)})",
             "return cls(**{f.name: getattr(recipe, prefix + f.name) for f in fields(cls) if 'frame' not in f.name})",
             ("tests/test_probe.py", "-k", "every_probe_setting")),
    Mutation("synthetic-noise-per-pixel", "endovit/data/synthetic.py",
             "across = min(width, NOISE_GRAINS_ACROSS)",
             "across = width",
             ("tests/test_probe.py", "-k", "noise")),
    Mutation("misfit-names-every-key", "endovit/weights.py",
             "return sep.join(items[:shown]) + more",
             "return sep.join(items)",
             ("tests/test_weights.py", "-k", "another_architecture")),
    Mutation("random-init-ignores-its-seed", "scripts/evaluate.py",
             "return int(match.group(1)) if match and match.group(1) else default",
             "return default",
             ("tests/test_probe.py", "-k", "evaluate_script")),
    Mutation("loader-batch-ignores-accumulation", "endovit/trainer.py",
             "recipe.crop_scale, micro_batch, recipe.seed,",
             "recipe.crop_scale, recipe.batch_size // accelerator.num_processes, recipe.seed,",
             (LOOP, "-k", "split")),
    # --- optimizer and lr schedule (optim) -------------------------------------------------------------------------
    Mutation("swa-anneal-over-two-epochs", "endovit/optim.py",
             "anneal = min(1.0, step / steps_per_epoch - swa_start_epoch)",
             "anneal = min(1.0, (step / steps_per_epoch - swa_start_epoch) / 2)",
             ("tests/test_optim.py",)),
    Mutation("cosine-ignores-warmup", "endovit/optim.py",
             "progress = (e - warmup_epochs) / (epochs - warmup_epochs)",
             "progress = e / epochs",
             ("tests/test_optim.py",)),
    Mutation("lr-without-layer-scale", "endovit/optim.py",
             'scale = group.get("lr_scale", 1.0)',
             'scale = 1.0',
             ("tests/test_optim.py",)),
    Mutation("weight-decay-on-norms-and-biases", "endovit/optim.py",
             "no_decay = param.ndim == 1 or name in NO_WEIGHT_DECAY",
             "no_decay = name in NO_WEIGHT_DECAY",
             ("tests/test_optim.py",)),
    # --- validation and pictures (evaluation, transforms) ----------------------------------------------------------
    Mutation("validation-without-gather-for-metrics", "endovit/evaluation.py",
             "accelerator.gather_for_metrics(mae.forward_loss(images, pred, mask, reduction=\"none\"))",
             "accelerator.gather(mae.forward_loss(images, pred, mask, reduction=\"none\"))",
             (TWO, "-k", "validation"), issue=True),
    Mutation("validation-on-one-process-only", "endovit/evaluation.py",
             "accelerator.gather_for_metrics(mae.forward_loss(images, pred, mask, reduction=\"none\"))",
             "mae.forward_loss(images, pred, mask, reduction=\"none\")",
             (TWO, "-k", "validation")),
    Mutation("validation-masks-by-position", "endovit/evaluation.py",
             'noise = fixed_noise(batch["index"].tolist(), mae.num_patches, seed, accelerator.device)',
             'noise = fixed_noise(range(len(batch["index"])), mae.num_patches, seed, accelerator.device)',
             (TWO, "-k", "validation")),
    Mutation("denormalize-swaps-mean-and-std", "endovit/data/transforms.py",
             "return (images.float() * std + mean).clamp(0.0, 1.0)",
             "return (images.float() * mean + std).clamp(0.0, 1.0)",
             (PICTURE,), issue=True),
    Mutation("picture-denormalized-with-std-as-mean", "endovit/evaluation.py",
             "original = denormalize(images, mean, std)",
             "original = denormalize(images, std, mean)",
             (PICTURE,)),
    Mutation("picture-masks-the-visible-patches", "endovit/evaluation.py",
             "masked = original * (1 - mask_img) + 0.15 * mask_img",
             "masked = original * mask_img + 0.15 * (1 - mask_img)",
             (PICTURE,)),
    Mutation("normalize-multiplies-by-std", "endovit/data/transforms.py",
             "return (pixels.float() / 255.0 - mean) / std",
             "return (pixels.float() / 255.0 - mean) * std",
             (PICTURE, "tests/test_data.py", "-k", "pixels or denormalize")),
    Mutation("flip-never-drawn", "endovit/data/transforms.py",
             "flip = torch.rand(1, generator=generator).item() < 0.5",
             "flip = torch.rand(1, generator=generator).item() < 0.0",
             ("tests/test_augment.py",)),
    # --- data ------------------------------------------------------------------------------------------------------
    Mutation("decode-returns-palette-grey-rgba-as-they-are", "endovit/data/frames.py",
             '    if mode == "RGB":\n        return img',
             '    if mode in ("RGB", "P", "L", "RGBA"):\n        return img',
             ("tests/test_data_decode.py", "-k", "every_mode"), issue=True),
    Mutation("decode-returns-unknown-modes-unconverted", "endovit/data/frames.py",
             '        return black\n    return img.convert("RGB")',
             "        return black\n    return img",
             ("tests/test_data_decode.py", "-k", "every_mode")),
    Mutation("decode-returns-rgba-uncomposited", "endovit/data/frames.py",
             'if img.mode == "RGBA":',
             'if img.mode == "RGBa":',
             ("tests/test_data_decode.py", "-k", "every_mode or alpha"), issue=True),
    Mutation("augmentation-seed-without-epoch", "endovit/data/loader.py",
             "sample_seed(self.seed, epoch, index, draw)",
             "sample_seed(self.seed, index, draw)",
             ("tests/test_data.py", "-k", "augmentation")),
    # --- checkpoints -----------------------------------------------------------------------------------------------
    Mutation("resume-check-ignores-changed-values", "endovit/checkpoint.py",
             "for key, value in run.items() if saved.get(key) != value]",
             "for key, value in run.items() if key not in saved]",
             ("tests/test_checkpoint.py", "-k", "refused")),
    Mutation("partial-checkpoint-looks-complete", "endovit/checkpoint.py",
             "return has_state and all((folder / name).stat().st_size == size for name, size in sizes.items())",
             "return has_state and all((folder / name).exists() for name, size in sizes.items())",
             ("tests/test_checkpoint.py",)),
    Mutation("prune-keeps-the-oldest", "endovit/checkpoint.py",
             "for old in checkpoint_dirs(root, manifest)[:-keep] if keep > 0 else []:",
             "for old in checkpoint_dirs(root, manifest)[keep:] if keep > 0 else []:",
             ("tests/test_checkpoint.py",)),
    # --- the SageMaker launcher ------------------------------------------------------------------------------------
    Mutation("spot-max-wait-under-max-run-accepted", "endovit/sagemaker/config.py",
             'extra.get("use_spot_instances") and int(extra.get("max_wait") or 0) < int(extra.get("max_run") or '
             '86400):',
             'extra.get("use_spot_instances") and not extra.get("max_wait"):',
             ("tests/test_launch_refusals.py", "-k", "spot"), issue=True),
    Mutation("custom-checkpoint-path-not-passed-on", "endovit/sagemaker/config.py",
             'hyperparameters["checkpoint_dir"] = local',
             'extra["checkpoint_local_path"] = local',
             ("tests/test_launch_request.py", "-k", "custom_checkpoints"), issue=True),
    Mutation("empty-hyperparameters-dropped", "endovit/sagemaker/script.py",
             '        hyperparameters[flag[2:].replace("-", "_")] = _typed(value)',
             '        if value:\n            hyperparameters[flag[2:].replace("-", "_")] = _typed(value)',
             ("tests/test_launch_request.py", "-k", "exactly_as_typed"), issue=True),
    # --- hostile input and stops (round 6) --------------------------------------------------------------------------
    Mutation("any-decoder-may-open-a-frame", "endovit/data/frames.py",
             "img = Image.open(source, formats=DECODED_FORMATS)", "img = Image.open(source)",
             ("tests/test_data_security.py", "-k", "postscript")),
    Mutation("local-datasets-may-name-local-paths", "endovit/data/store.py",
             "    require_image_bytes(dataset, str(path))\n    return dataset, manifest",
             "    if is_remote(path):\n        require_image_bytes(dataset, str(path))\n    return dataset, manifest",
             ("tests/test_data_security.py", "-k", "without_image_bytes")),
    Mutation("saved-dataset-files-unchecked", "endovit/data/frames.py",
             '        _require_files_inside(fs, root.rstrip("/"), path)\n', "",
             ("tests/test_data_security.py", "-k", "outside_its_folder")),
    Mutation("upload-skips-linked-folders", "endovit/sagemaker/source.py",
             "for folder, names in walk_once(root)[0] for name in names]",
             "for folder, _, names in os.walk(root) for name in names]",
             ("tests/test_sagemaker_launch.py", "-k", "linked")),
    Mutation("checkpoint-allowlist-admits-pickles", "endovit/checkpoint.py",
             'ALLOWED_FILES = re.compile(r"^(model(_\\d+)?', 'ALLOWED_FILES = re.compile(r".*|^(model(_\\d+)?',
             ("tests/test_checkpoint_security.py", "-k", "registered")),
    Mutation("resume-beside-newer-checkpoints", "endovit/checkpoint.py",
             "if step is not None and _step_of(p) > step]", "if step is not None and _step_of(p) > step + 10**9]",
             ("tests/test_checkpoint.py", "-k", "older_checkpoint")),
    Mutation("finished-run-assumes-its-export", "endovit/saver.py",
             "complete = all(exported_step(folder) == step for folder in folders)",
             "complete = exported_step(self.out_dir) is not None",
             ("tests/test_stop.py", "-k", "final_export")),
    Mutation("tensorboard-keeps-lost-steps", "endovit/trainer.py",
             'init_kwargs={"tensorboard": {"purge_step": step + 1}} if step else {})', "init_kwargs={})",
             ("tests/test_stop.py", "-k", "tensorboard")),
    Mutation("processes-agree-only-at-log-steps", "endovit/engine.py",
             "return accelerator.num_processes == 1 or step >= self.next_check",
             "return accelerator.num_processes == 1",
             ("tests/test_stop.py", "-k", "long_before")),
    Mutation("min-lr-above-peak-accepted", "endovit/recipe.py",
             "        if self.min_lr > self.peak_lr:", "        if self.min_lr > 10 * self.peak_lr:",
             ("tests/test_recipe.py", "-k", "bad_values")),
    # --- the model -------------------------------------------------------------------------------------------------
    Mutation("export-needs-the-newest-timm", "endovit/hub.py",
             "save_config_for_hf(model, folder / CONFIG_NAME, model_args=model_args)",
             "save_config_for_hf(model, folder / CONFIG_NAME, model_args=model_args, data_config=data_config)",
             ("tests/test_timm_floor.py",)),
    Mutation("one-patch-fewer-kept", "endovit/models/mae.py",
             "len_keep = int(length * (1 - mask_ratio))",
             "len_keep = int(length * (1 - mask_ratio)) - 1",
             ("tests/test_models.py", "-k", "reference")),
]


def tracked_files(repo: Path) -> list[str]:
    """Tracked files plus untracked ones git does not ignore (new tests not yet committed)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         capture_output=True, check=True).stdout.decode()
    return sorted({name for name in out.split("\0") if name and (repo / name).is_file()})


def copy_repo(repo: Path, dest: Path) -> None:
    """The tracked files, plus a link to the wheels ``make test`` downloads for the tests (.whl-local/)."""
    for name in tracked_files(repo):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, target)
    if (repo / ".whl-local").is_dir():
        (dest / ".whl-local").symlink_to(repo / ".whl-local", target_is_directory=True)


def sync_problems(mutations: list[Mutation], repo: Path) -> list[str]:
    """Every way the list is out of step with the code (each original exactly once, each mutant compiling)."""
    problems = []
    names = [m.name for m in mutations]
    problems += [f"{name}: the name is used twice" for name in sorted({n for n in names if names.count(n) > 1})]
    for m in mutations:
        path = repo / m.file
        if not path.is_file():
            problems.append(f"{m.name}: {m.file} does not exist")
            continue
        source = path.read_text()
        count = source.count(m.original)
        if count != 1:
            problems.append(f"{m.name}: the original snippet occurs {count} times in {m.file} (must be once): "
                            f"{m.original!r}")
            continue
        if m.original == m.mutated:
            problems.append(f"{m.name}: the mutation changes nothing")
            continue
        try:
            compile(source.replace(m.original, m.mutated), m.file, "exec")
        except SyntaxError as err:
            problems.append(f"{m.name}: the mutated {m.file} does not compile ({err})")
    return problems


def baseline_selection(mutations: list[Mutation]) -> tuple[str, ...]:
    """One pytest selection for every mutation's tests together: their files, and a ``-k`` that keeps, per file,
    what its mutations select (``-k`` matches module names too, e.g. ``test_loop.py``)."""
    files: list[str] = []
    clauses: list[str] = []
    for m in mutations:
        names = [t for t in m.tests if t.startswith("tests/")]
        keyword = m.tests[m.tests.index("-k") + 1] if "-k" in m.tests else None
        files += names
        modules = " or ".join(Path(name.split("::")[0]).name for name in names)
        tests = " or ".join(name.split("::")[1] for name in names if "::" in name)
        clause = f"({modules})" + (f" and ({tests})" if tests else "") + (f" and ({keyword})" if keyword else "")
        clauses.append(f"({clause})")
    return (*[f.split("::")[0] for f in dict.fromkeys(files)], "-k", " or ".join(dict.fromkeys(clauses)))


def run_tests(copy: Path, tests: tuple[str, ...], timeout: int) -> tuple[int | None, float, str]:
    """(pytest's exit status or None on timeout, seconds, the output's tail) for ``tests`` in ``copy``."""
    env = dict(os.environ, PYTHONPATH=str(copy), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               CUDA_VISIBLE_DEVICES="", PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    start = time.perf_counter()
    try:
        result = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start, ""
    return result.returncode, time.perf_counter() - start, (result.stdout + result.stderr)[-3000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min_score", type=float, default=0.9, help="fail below this share of caught mutations")
    parser.add_argument("--only", nargs="+", default=[], help="run the mutations whose name contains one of these")
    parser.add_argument("--list", action="store_true", help="list the mutations (checked against the code) and exit")
    parser.add_argument("--no_baseline", action="store_true", help="skip running the unmutated tests first")
    parser.add_argument("--timeout", type=int, default=180, help="seconds one mutation's tests may take (a hang "
                                                                  "counts as caught)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy of the repository")
    args = parser.parse_args(argv)

    problems = sync_problems(MUTATIONS, REPO)
    if problems:
        print("the mutation list is out of sync with the code:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    chosen = [m for m in MUTATIONS if not args.only or any(word in m.name for word in args.only)]
    if args.list or not chosen:
        for m in chosen:
            print(f"{m.name:46s} {m.file:30s} {' '.join(m.tests)}{'  (issue 15)' if m.issue else ''}")
        return 0 if chosen else 2

    started = time.perf_counter()
    copy_root = Path(tempfile.mkdtemp(prefix="endovit-mutants-"))
    copy = copy_root / "repo"
    try:
        copy_repo(REPO, copy)
        if not args.no_baseline:
            status, seconds, tail = run_tests(copy, baseline_selection(chosen), args.timeout)
            if status != 0:
                print(f"baseline: the unmutated tests fail (exit {status}):\n{tail}", file=sys.stderr)
                return 2
            print(f"baseline: the unmutated tests pass ({seconds:.0f}s)", flush=True)
        survivors, results = [], []
        for number, m in enumerate(chosen, 1):
            path = copy / m.file
            original = path.read_text()
            path.write_text(original.replace(m.original, m.mutated))
            try:
                status, seconds, tail = run_tests(copy, m.tests, args.timeout)
            finally:
                path.write_text(original)
            if status in (4, 5):  # usage error, nothing collected: the selection is wrong, not the code
                print(f"{m.name}: its tests {' '.join(m.tests)} select nothing or are misspelt (exit {status}):\n"
                      f"{tail}", file=sys.stderr)
                return 2
            caught = status != 0
            verdict = "caught" if caught else "SURVIVED"
            if status is None:
                verdict += " (timeout)"
            results.append(caught)
            if not caught:
                survivors.append(m)
            print(f"[{number:2d}/{len(chosen)}] {verdict:17s} {m.name:46s} {seconds:5.0f}s  {' '.join(m.tests)}",
                  flush=True)
        score = sum(results) / len(results)
        issue = [caught for m, caught in zip(chosen, results, strict=True) if m.issue]
        print(f"\nmutation score {score:.0%}: {sum(results)} of {len(results)} caught; the bugs of issue 15: "
              f"{sum(issue)} of {len(issue)} caught; {time.perf_counter() - started:.0f}s")
        for m in survivors:
            print(f"  survived: {m.name} ({m.file}: {m.original.strip()!r} -> {m.mutated.strip()!r})")
        return 0 if score >= args.min_score else 1
    finally:
        if args.keep:
            print(f"copy kept in {copy}")
        else:
            shutil.rmtree(copy_root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
