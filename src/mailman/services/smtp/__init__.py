"""The relay side of the engine: everything that speaks SMTP or shapes what is sent.

- :mod:`~mailman.services.smtp.url`: relay URLs (``smtp://``, ``smtp+starttls://``, ``smtps://``);
- :mod:`~mailman.services.smtp.pool`: ``SmtpPool``, reusable aiosmtplib connections, fair turns,
  the rate limit at the moment of sending, sends a caller may withdraw;
- :mod:`~mailman.services.smtp.mailer`: ``Mailer``, the process that owns the pool and changes its
  settings live;
- :mod:`~mailman.services.smtp.outcome`: what an SMTP reply means (delivered, transient, permanent,
  a fault of the relay);
- :mod:`~mailman.services.smtp.message`: a letter rendered once, personalised per recipient;
- :mod:`~mailman.services.smtp.rate_limit` and :mod:`~mailman.services.smtp.circuit_breaker`.

May import :mod:`mailman.supervisor` and :mod:`mailman.services.errors`; nothing of
:mod:`mailman.services.store` or :mod:`mailman.services.delivery`.
"""
