"""Turning results into tables (rich), JSON and plots."""
