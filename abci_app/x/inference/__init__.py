"""Queries: escrow, expert selection, commit-reveal answer rounds, peer scoring, settlement."""
