"""Datasets: procedural generators and loaders for real formats."""
