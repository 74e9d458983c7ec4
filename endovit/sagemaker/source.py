"""What travels to a training job: the code (entry script, ``endovit`` package, pinned requirements) and the local
data folders uploaded as input channels (hidden files skipped, credentials refused)."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import shutil
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from endovit.errors import LaunchError
from endovit.io import walk_once

__all__ = ["PACKAGE_FILE_SUFFIXES", "IMAGE_PROVIDED", "Upload", "endovit_requirements", "job_requirements",
           "stage_source_dir", "plan_upload"]

PACKAGE_FILE_SUFFIXES = (".py", ".yaml")
PACKAGE = Path(__file__).resolve().parents[1]
CONSTRAINTS = PACKAGE.parent / "constraints.txt"  # the versions CI installs and tests
# in the Hugging Face PyTorch image, built for its CUDA; the launcher checks its version against endovit's range
IMAGE_PROVIDED = {"torch", "torchvision"}
CREDENTIAL_NAMES = {".env", "credentials", ".netrc", ".git-credentials", ".pgpass", ".pypirc", ".npmrc",
                    "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519"}
CREDENTIAL_SUFFIXES = {".pem", ".key", ".p12", ".pfx"}


def endovit_requirements(extras: tuple[str, ...] = ()) -> list[str]:
    """endovit's install requirements, plus those of ``extras`` (e.g. ``video``: PyAV), as ranges."""
    try:
        requires = importlib.metadata.requires("endovit") or []
    except importlib.metadata.PackageNotFoundError:
        raise LaunchError("endovit is not installed: pip install -e '.[sagemaker]' from the repository root") from None
    chosen = []
    for text in requires:
        marker = Requirement(text).marker
        if marker is None or "extra" not in str(marker) or any(marker.evaluate({"extra": e}) for e in extras):
            chosen.append(text)
    return chosen


def job_requirements(extras: tuple[str, ...] = ()) -> list[str]:
    """The requirements.txt lines the job pip-installs: endovit's requirements (and ``extras``') pinned to the
    versions in constraints.txt (what was tested), except those the image provides; a requirement not listed keeps
    its range."""
    if not CONSTRAINTS.is_file():
        raise LaunchError(f"{CONSTRAINTS} not found: launch from a source checkout of endovit (the job's "
                          "requirements are pinned to the tested versions listed there)")
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
    lines = []
    for text in endovit_requirements(extras):
        name = canonicalize_name(Requirement(text).name)
        if name not in IMAGE_PROVIDED:
            lines.append(f"{Requirement(text).name}=={pins[name]}" if name in pins else text)
    return lines


def stage_source_dir(entry_script: str | os.PathLike, dest: str | os.PathLike, requirements: bool = True,
                     extras: tuple[str, ...] = ()) -> Path:
    """Fill ``dest`` with what the job runs: the entry script, the ``endovit`` package (its ``.py`` and recipe
    files only) and, with ``requirements``, a ``requirements.txt`` (``extras``' requirements included) that the
    container pip-installs at job start (which needs the internet). Nothing else travels."""
    entry_script, dest = Path(entry_script), Path(dest)

    def skip(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n.startswith(".") or n == "__pycache__"
                or (Path(folder, n).is_file() and Path(n).suffix not in PACKAGE_FILE_SUFFIXES)]

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(PACKAGE, dest / PACKAGE.name, ignore=skip, dirs_exist_ok=True)
    shutil.copy2(entry_script, dest / entry_script.name)
    if requirements:
        (dest / "requirements.txt").write_text(
            "# endovit's requirements pinned to the tested versions (constraints.txt); the SageMaker container "
            "installs them before running the entry script; torch and torchvision come with the image\n"
            + "\n".join(job_requirements(extras)) + "\n")
    return dest


@dataclasses.dataclass(frozen=True)
class Upload:
    """A local file or folder that becomes an input channel: its files and the S3 keys under ``uri`` they go to."""

    source: str
    uri: str
    files: tuple[tuple[str, str], ...]  # (local path, key relative to uri)
    hidden: int  # hidden files (a name starting with ".") left out


def _is_credentials(relative: Path) -> bool:
    name = relative.name
    return (name in CREDENTIAL_NAMES or name.startswith(".env.") or Path(name).suffix in CREDENTIAL_SUFFIXES
            or relative.parts[-2:] == (".aws", "config"))


def plan_upload(channel: str, source: str, uri: str) -> Upload:
    """The files of ``source`` to upload, hidden ones left out; refused when it holds a credentials file, by its
    own name or the name of the file a link points to. Linked folders are walked as training walks them locally."""
    root = Path(source)
    paths = [root] if root.is_file() else [Path(folder, name) for folder, names in walk_once(root)[0] for name in names]
    listing = [(path, Path(root.name) if path == root else path.relative_to(root)) for path in paths]
    files, hidden = [], 0
    for path, relative in listing:
        target = Path(os.path.realpath(path))
        if _is_credentials(relative) or _is_credentials(target):
            link = f" (a link to {target})" if _is_credentials(target) and not _is_credentials(relative) else ""
            raise LaunchError(f"channel {channel}: {path}{link} looks like a credentials file and would be uploaded "
                              "to S3; move it out of the folder (or upload the data yourself and pass its s3:// URI)")
        if any(part.startswith(".") for part in relative.parts):
            hidden += 1
        else:
            files.append((str(path), relative.as_posix()))
    return Upload(source, uri, tuple(sorted(files, key=lambda f: f[1])), hidden)
