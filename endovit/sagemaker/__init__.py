"""Amazon SageMaker.

- :mod:`endovit.sagemaker.job`: inside a training job, the ``SM_*`` environment as recipe defaults (no SDK needed).
- :mod:`endovit.sagemaker.launch`: on the user's machine, the training-job request built from an accelerate
  SageMaker config and submitted through SageMaker Python SDK v2 (``pip install 'endovit[sagemaker]'``).
- :mod:`endovit.sagemaker.processing`: the same for a prepare as a Processing job over several instances, and the
  merge of their parts (``scripts/launch_prepare.py``); :mod:`endovit.sagemaker.aws`: what both launchers share.

This package imports only :mod:`~endovit.sagemaker.job`, so that a job (and :mod:`endovit.recipe`) never needs
the SDK; import :mod:`endovit.sagemaker.launch` or :mod:`~endovit.sagemaker.processing` explicitly to launch.
"""
from endovit.sagemaker.job import CHANNELS, job_defaults

__all__ = ["CHANNELS", "job_defaults"]
