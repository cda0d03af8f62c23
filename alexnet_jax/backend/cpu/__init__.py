"""Code for XLA:CPU only: oneDNN convolutions through XLA's custom call (onednn) and glibc's
malloc settings (host_memory).

Reached through `alexnet_jax.backend` only; docs/performance.md ("Why the CPU backend does what
it does") holds the measurements behind each.
"""
