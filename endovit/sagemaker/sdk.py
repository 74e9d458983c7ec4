"""The SageMaker Python SDK version check, importable without the SDK (v3 has no ``sagemaker.huggingface``)."""
from __future__ import annotations

import importlib.metadata
import logging
import os

from packaging.version import Version

from endovit.errors import LaunchError

__all__ = ["SDK_REQUIREMENT", "require_sdk_v2", "prepare_sdk"]

SDK_REQUIREMENT = "sagemaker>=2.254.1,<3"


def require_sdk_v2() -> None:
    """Fail clearly unless SageMaker Python SDK v2 is installed (v3 removed ``sagemaker.huggingface``)."""
    try:
        version = importlib.metadata.version("sagemaker")
    except importlib.metadata.PackageNotFoundError:
        raise LaunchError(f"the SageMaker Python SDK is not installed: pip install 'endovit[sagemaker]' "
                          f"(or '{SDK_REQUIREMENT}')") from None
    if Version(version).major >= 3:
        raise LaunchError(f"sagemaker {version} is installed, but accelerate's SageMaker launcher and this one need "
                          f"SDK v2 (v3 removed sagemaker.huggingface.HuggingFace): pip install '{SDK_REQUIREMENT}'")


def prepare_sdk() -> None:
    """Before the first SDK import: require v2, silence its v2 deprecation banner, and make its ``sagemaker.config``
    logger an ordinary library logger (the SDK gives it a stdout handler unless it has one), so that stdout carries
    only the launcher's results and the SDK's INFO lines show only where logging is configured (on stderr)."""
    require_sdk_v2()
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    logger = logging.getLogger("sagemaker.config")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
