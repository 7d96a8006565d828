"""What a person looks at: the training run's figures (figures.py), evaluate's error gallery (gallery.py) and
confusion CSV and figures for its run (evaluation.py), and what the self-contained HTML pages share (pages.py)."""
