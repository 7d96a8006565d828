"""op-classifier: a configuration-driven experiment pipeline for image classifiers."""

__version__ = "0.1.0"
