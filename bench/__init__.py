"""Side-by-side benchmark of trustd's CRI shim against containerd, on the real stack.

Run from the repository root: ``python3 -m bench`` (see bench/README.md).
"""
