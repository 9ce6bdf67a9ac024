"""Latent Zoning Networks core."""
