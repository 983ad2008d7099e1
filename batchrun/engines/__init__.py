"""Engines take prepared requests and yield results: the live engine (and what engines share)."""
