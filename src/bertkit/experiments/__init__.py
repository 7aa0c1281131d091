"""`bertkit experiment NAME`: the BERT paper's claims reproduced at small scale on real data (see claims.py)."""
