"""Analyses over checkpoints: inspect, LoRA, metadata, schedules, scans (and later diff, matrix, cost)."""
