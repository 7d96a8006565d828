"""What every architecture shares, a module per job: layers.py (the raw-pixel input, augmentation, the
probabilities out), convolutions.py (JAX-on-CPU convolutions), metrics.py, compile.py, saving.py.

Pure Keras 3, backend-agnostic, no tracking, no config loading; the only file I/O is saving.py's."""
