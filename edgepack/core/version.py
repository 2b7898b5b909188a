"""edgepack's version: recorded in every results.json and part of every stage's cache key."""

__version__ = "0.1.0"
