"""The newsletter delivery engine: the parts of mailman that know about letters.

Three packages, one concern each, and :mod:`mailman.services.errors` (the root of every exception
they raise) beside them:

- :mod:`mailman.services.store`: the Postgres side. The asyncpg adapter and its error translation,
  the schema migrations, the domain objects (``models``), the SQL per table family (``queries``)
  and the ``Repo`` process that owns the pool. Knows nothing of SMTP or of sending.
- :mod:`mailman.services.smtp`: the relay side. Relay URLs, the SMTP connection pool and the
  ``Mailer`` process that owns it, the classification of SMTP replies, message rendering, the rate
  limit and the circuit breaker. Knows nothing of Postgres or of letters being sent.
- :mod:`mailman.services.delivery`: the engine that uses both. The application tree, the dispatcher,
  one ``LetterDeliveryService`` per letter and its driver, the recipient task, the retry policy,
  the scheduler and the letter commands.

Everything here builds on the public names of :mod:`mailman.supervisor` only, and imports no RPC,
daemon, CLI or client code (import-linter contracts in ``pyproject.toml``, run by ``make lint``).
Import from the modules directly: the packages re-export nothing.
"""
