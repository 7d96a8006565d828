"""op-classifier: a configuration-driven experiment pipeline for image classifiers."""

from op_classifier import quiet as _quiet

__version__ = "0.1.0"

# Here, not in main(): the stage modules import TensorFlow at their top, before main() runs.
_quiet.configure()
