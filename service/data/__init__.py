"""Data files shipped with the service (the default partner directory)."""
