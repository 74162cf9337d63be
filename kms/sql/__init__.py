"""Durable state of the control plane behind a small ``Store``: SQLite by default, PostgreSQL later.

``Store`` owns the engine, transactions and migrations (``migrations.MIGRATIONS``); per-area modules such
as ``keys`` hold the SQL for one part of the schema (``schema``) and speak only SQLAlchemy Core, so the
same code runs on both databases.
"""

from sqlalchemy.engine import Connection

from kms.sql.store import Store, open_store

# Connection: the transaction handle the use cases pass through to SQL functions (they import no sqlalchemy)
__all__ = ["Connection", "Store", "open_store"]
