"""The data path: raw folders, splits, decoding, the prepared arrays, streaming to Keras, the built-in sample."""
