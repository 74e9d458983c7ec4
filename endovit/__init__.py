"""endovit: MAE pretraining of vision transformers on endoscopic video, with Accelerate."""

__version__ = "0.1.0"
