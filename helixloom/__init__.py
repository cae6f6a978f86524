"""helixloom: make open LLMs answer better and learn from their users, on your own machine."""

__version__ = "0.1.0"
