"""Looking into the data before trusting it: cleanlab's findings over a backbone's features (findings.py)
and the corrections a user writes from them (corrections.py)."""
