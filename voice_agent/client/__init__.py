"""Talking to a running model server: the HTTP client and the remote engine adapters."""
