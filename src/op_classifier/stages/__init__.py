"""The DVC stages, one module each: prepare -> tune -> train -> evaluate (`python -m op_classifier.stages.<name>`)."""
