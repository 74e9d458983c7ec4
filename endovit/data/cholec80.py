"""Cholec80's annotation vocabulary: the seven surgical phases and seven instruments, in the files' order."""
from __future__ import annotations

__all__ = ["PHASES", "TOOLS"]

PHASES = ("Preparation", "CalotTriangleDissection", "ClippingCutting", "GallbladderDissection",
          "GallbladderPackaging", "CleaningCoagulation", "GallbladderRetraction")
TOOLS = ("Grasper", "Bipolar", "Hook", "Scissors", "Clipper", "Irrigator", "SpecimenBag")
