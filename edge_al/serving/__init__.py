"""Serving machinery that is not HTTP: the adaptive batcher (``batcher``)."""
