"""Is a difference real? Two evaluations paired on the same images (paired.py), `op-classifier compare`'s
references resolved to their predictions (evaluations.py), and the pipeline over several seeds (repeat.py);
evaluate's scores (scores.py) and what it hands the registry with a model (promotion.py)."""
