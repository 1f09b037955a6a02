"""The Postgres side of the engine: everything that reads or writes the database.

- :mod:`~mailman.services.store.database`: pools, transactions, asyncpg errors translated into
  :mod:`mailman.services.errors`;
- :mod:`~mailman.services.store.migrations`: the numbered SQL files and the migrator;
- :mod:`~mailman.services.store.models`: the frozen domain objects rows become, and the statuses;
- :mod:`~mailman.services.store.queries`: the SQL, one module per table family;
- :mod:`~mailman.services.store.repo`: ``Repo``, the process that owns the pool and rides out restarts.

May import :mod:`mailman.supervisor` and :mod:`mailman.services.errors`; nothing of
:mod:`mailman.services.smtp` or :mod:`mailman.services.delivery`.
"""
