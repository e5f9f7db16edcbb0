"""turnout: an OpenAI-compatible gateway that routes every request to the model that should answer it."""

__version__ = "0.1.0"
