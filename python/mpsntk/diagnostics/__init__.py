"""Diagnostics of the kernel regime of MPS models."""
