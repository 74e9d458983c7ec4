"""Amazon SageMaker.

- :mod:`endovit.sagemaker.job`: inside a training job, the ``SM_*`` environment as recipe defaults (no SDK needed).
- :mod:`endovit.sagemaker.launch`: on the user's machine, the training-job request built from an accelerate
  SageMaker config and submitted through SageMaker Python SDK v2 (``pip install 'endovit[sagemaker]'``).

This package imports only :mod:`~endovit.sagemaker.job`, so that a job (and :mod:`endovit.recipe`) never needs
the SDK; import :mod:`endovit.sagemaker.launch` explicitly to launch.
"""
from endovit.sagemaker.job import CHANNELS, job_defaults

__all__ = ["CHANNELS", "job_defaults"]
