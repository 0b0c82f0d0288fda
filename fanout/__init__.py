"""Shared, torch-free pieces of fanout: the layout file, request parameters, the launcher."""
