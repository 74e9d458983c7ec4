"""What travels to a training job as code: the entry script, the ``endovit`` package and its requirements."""
from __future__ import annotations

import importlib.metadata
import os
import shutil
from pathlib import Path

from packaging.requirements import Requirement

from endovit.errors import LaunchError

__all__ = ["PACKAGE_FILE_SUFFIXES", "endovit_requirements", "stage_source_dir"]

PACKAGE_FILE_SUFFIXES = (".py", ".yaml")
PACKAGE = Path(__file__).resolve().parents[1]


def endovit_requirements() -> list[str]:
    """endovit's install requirements (no extras), for the container's requirements.txt."""
    try:
        requires = importlib.metadata.requires("endovit") or []
    except importlib.metadata.PackageNotFoundError:
        raise LaunchError("endovit is not installed: pip install -e '.[sagemaker]' from the repository root") from None
    return [r for r in requires if Requirement(r).marker is None or "extra" not in str(Requirement(r).marker)]


def stage_source_dir(entry_script: str | os.PathLike, dest: str | os.PathLike, requirements: bool = True) -> Path:
    """Fill ``dest`` with what the job runs: the entry script, the ``endovit`` package (its ``.py`` and recipe
    files only) and, with ``requirements``, a ``requirements.txt`` that the container pip-installs at job start
    (which needs the internet). Nothing else travels."""
    entry_script, dest = Path(entry_script), Path(dest)

    def skip(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n.startswith(".") or n == "__pycache__"
                or (Path(folder, n).is_file() and Path(n).suffix not in PACKAGE_FILE_SUFFIXES)]

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(PACKAGE, dest / PACKAGE.name, ignore=skip, dirs_exist_ok=True)
    shutil.copy2(entry_script, dest / entry_script.name)
    if requirements:
        (dest / "requirements.txt").write_text(
            "# endovit's requirements; the SageMaker container installs them before running the entry script\n"
            + "\n".join(endovit_requirements()) + "\n")
    return dest
