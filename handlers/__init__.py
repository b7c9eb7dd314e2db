"""HTTP handlers, bound to the spec's operationIds; thin: unpack, one store call, render.

Handlers never touch the database driver; they call the stores in :mod:`models` through the
:class:`asyncgate.services.Services` the app's lifespan provides.
"""
