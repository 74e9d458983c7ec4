"""The shipped recipes (YAML), found by name with ``--recipe NAME``."""
