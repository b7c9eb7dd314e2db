"""asyncgate: a durable, spec-first async inference gateway."""

__version__ = "0.1.0"
