"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) in JAX and Flax."""

__version__ = "0.1.0"
