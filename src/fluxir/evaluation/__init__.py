"""Evaluation (paper Sec. 4.1): test sets, scoring, the Table-1-style report."""
