"""Triton kernels, installed as mixfast.kernels."""
