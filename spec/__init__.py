"""The OpenAPI contract, shipped inside the package as data (see :mod:`asyncgate.resources`)."""
