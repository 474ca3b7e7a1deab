"""One module per command; each defines ``register(subparsers)`` and sets ``func`` on its parser."""
