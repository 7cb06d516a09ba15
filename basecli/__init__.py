"""basecli: a command-line playground for base language models."""

__version__ = "0.1.0"
