"""The local provider: models run by the worker itself, in a pool of its own processes."""

from asyncgate.worker.local.pool import LocalPool

__all__ = ["LocalPool"]
