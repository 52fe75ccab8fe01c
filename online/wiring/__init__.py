"""The wiring: the only place that builds stores and processes from one Settings object."""
