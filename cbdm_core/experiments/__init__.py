"""Experiment drivers built on the framework: sweeps (paper Figures 5-6) and the downstream classifier study."""
