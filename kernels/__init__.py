"""fastsort's Triton kernels and their launchers (installed as ``fastsort.kernels``).

Importing this package imports triton; the public package only imports it
lazily, when a Triton backend is actually used.
"""
