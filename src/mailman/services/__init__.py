"""The newsletter delivery engine: the parts of mailman that know about letters.

Everything here builds on the public names of :mod:`mailman.supervisor` only. The Postgres adapter
lives in :mod:`mailman.services.database`, :mod:`mailman.services.migrations` and
:mod:`mailman.services.queries`; its domain objects in :mod:`mailman.services.models`; its errors in
:mod:`mailman.services.errors`. Import from those modules directly: this package re-exports nothing.
"""
