"""The command line, ``python -m xtfclip_lib COMMAND``: the top of the house, above every part.

One module per command; each defines ``register(subparsers)`` and sets ``func`` on its parser.
Nothing here is imported by the library: its public face is the command line itself.
"""
__all__: list[str] = []
