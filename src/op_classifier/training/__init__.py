"""The training machinery: data-parallel runs, hyperparameters, the tuner cluster, resumable state, the backend."""
