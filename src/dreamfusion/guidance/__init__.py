"""Guidance backends: frozen text-to-image priors that score renders through SDS."""
