"""The SQL of the delivery engine: one module per table family, each query a named constant.

Every public function takes an executor (a connection, a pooled connection or a pool, see
:mod:`mailman.services.database`) first, returns domain objects from :mod:`mailman.services.models`,
and raises only :class:`~mailman.services.errors.MailmanError` subclasses.

- :mod:`~mailman.services.queries.newsletters`: users and their newsletters
- :mod:`~mailman.services.queries.subscriptions`: subscribers, batch import, statuses
- :mod:`~mailman.services.queries.letters`: letters, their status and summary, due and left-sending ones
- :mod:`~mailman.services.queries.deliveries`: the deliveries map: audience, claim, fenced ack, recovery
- :mod:`~mailman.services.queries.newsletter_emails`: messages accepted by SMTP
"""
