"""The alembic migrations, shipped inside the package as data (see :mod:`asyncgate.resources`)."""
