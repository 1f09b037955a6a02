"""The SQL of the delivery engine: one module per table family, each query a named constant.

Every public function takes an executor (a connection, a pooled connection or a pool, see
:mod:`mailman.services.store.database`) first, returns domain objects from
:mod:`mailman.services.store.models`, and raises only
:class:`~mailman.services.errors.MailmanError` subclasses.

- :mod:`~mailman.services.store.queries.newsletters`: users and their newsletters
- :mod:`~mailman.services.store.queries.subscriptions`: subscribers, batch import, statuses
- :mod:`~mailman.services.store.queries.letters`: letters, their status and summary, due and left-sending ones
- :mod:`~mailman.services.store.queries.deliveries`: the deliveries map: audience, claim, fenced ack, recovery
- :mod:`~mailman.services.store.queries.newsletter_emails`: messages accepted by SMTP
"""
