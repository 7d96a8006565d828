"""Using a trained model: `predict` (CLI and HTML report) and `serve` (REST, TensorFlow Serving's body)."""
