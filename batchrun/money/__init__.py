"""Prices, the run's budget and estimates."""
