"""alignlab: align language models with feedback, and measure it against a gold reward."""

__version__ = "0.1.0"
