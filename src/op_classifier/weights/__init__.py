"""Pretrained weights from foreign checkpoints: one reader per source format, one converter per architecture."""
