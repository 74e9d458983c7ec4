"""Frozen-feature probes (k-NN, linear) of MAE encoders on labelled frames, split by video."""
from endovit.probes.labels import LABEL_FORMATS, PHASES, TOOLS, Labels
from endovit.probes.probe import (
    KINDS,
    Probe,
    ProbeSettings,
    build_probe,
    load_probe_data,
    metric_names,
    probe_metrics,
)

__all__ = ["LABEL_FORMATS", "PHASES", "TOOLS", "Labels", "KINDS", "Probe", "ProbeSettings", "build_probe",
           "load_probe_data", "metric_names", "probe_metrics"]
