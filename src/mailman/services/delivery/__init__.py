"""The delivery engine: sending letters with the store and the relay, under supervision.

- :mod:`~mailman.services.delivery.application`: the tree (Repo, Registry, Mailer, tasks, dispatcher);
- :mod:`~mailman.services.delivery.context`: what a letter's processes are told (names, settings);
- :mod:`~mailman.services.delivery.letter_delivery_dispatcher`: one ``LetterSupervisor`` per letter;
- :mod:`~mailman.services.delivery.letter_delivery_service`: the process that owns one letter's send;
- :mod:`~mailman.services.delivery.letter_driver`: the process that claims and runs its recipients;
- :mod:`~mailman.services.delivery.recipient_task`, :mod:`~mailman.services.delivery.retry_policy`,
  :mod:`~mailman.services.delivery.outcome_buffer`: one recipient's send, what its result means,
  and how results are written;
- :mod:`~mailman.services.delivery.scheduler`: boot recovery, takeovers, letters due later;
- :mod:`~mailman.services.delivery.letter_commands`: send, status, pause, resume, cancel, retry.

May import :mod:`mailman.supervisor`, :mod:`mailman.services.store`, :mod:`mailman.services.smtp`
and :mod:`mailman.services.errors`; nothing of the RPC, daemon, CLI or client code.
"""
