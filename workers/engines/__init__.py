"""Clients for the inference engines a worker can front."""
