"""The SageMaker Python SDK version check, importable without the SDK (v3 has no ``sagemaker.huggingface``)."""
from __future__ import annotations

import importlib.metadata

from packaging.version import Version

from endovit.errors import LaunchError

__all__ = ["SDK_REQUIREMENT", "require_sdk_v2"]

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
