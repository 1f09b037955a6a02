"""Application: the root of mailman's supervision tree.

::

    Application                       Supervisor, rest_for_one
    ├── Repo                          owns the asyncpg pool
    ├── Registry (letters)            letter id -> the LetterDeliveryService sending it
    ├── Mailer                        SMTP connection pool + rate limiter
    ├── MailmanSupervisor             TaskSupervisor: runs the recipient tasks
    ├── LetterDeliveryDispatcher      DynamicSupervisor: one LetterSupervisor per letter sending
    └── ...                           the daemon adds its Scheduler and RpcServer here

Why ``rest_for_one``: each child depends on those started before it. If the Repo restarts, every
process after it holds the old pool and must restart too; if the Registry restarts, every letter
service registered in it must be restarted to register again; if the Mailer restarts, the letters
hold its closed pool. A child late in the list (the RPC server) can fail alone without disturbing
what came before it. Letters resume from Postgres whenever their services restart.

Example::

    config = ApplicationConfig(database_url=dsn, mailer=MailerConfig(url="smtp://127.0.0.1:2525"))
    tree = await Application.start_link(config, name="mailman")
    await letter_commands.send_letter(config.context, 42)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mailman.services.delivery.context import DeliveryContext
from mailman.services.delivery.letter_delivery_dispatcher import LetterDeliveryDispatcher
from mailman.services.smtp.mailer import Mailer, MailerConfig
from mailman.services.store.repo import Repo, RepoConfig
from mailman.supervisor import (
    ChildSpec,
    DynamicSupervisorSpec,
    Keys,
    Registry,
    Strategy,
    Supervisor,
    SupervisorSpec,
    TaskSupervisor,
)

__all__ = ["Application", "ApplicationConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplicationConfig:
    """Everything the tree needs to start."""

    database_url: str
    mailer: MailerConfig
    context: DeliveryContext = field(default_factory=DeliveryContext)
    max_restarts: int = 3
    max_seconds: int = 5
    extra_children: Sequence[ChildSpec] = ()
    """Started last, in order (the daemon's Scheduler and RpcServer)."""


class Application(Supervisor):
    """mailman's root supervisor (rest_for_one)."""

    def init(self, arg: ApplicationConfig) -> SupervisorSpec:
        context = arg.context
        children = [
            Repo.child_spec(RepoConfig(dsn=arg.database_url), id="repo", name=context.repo),
            Registry.child_spec(keys=Keys.UNIQUE, name=context.letters),
            Mailer.child_spec(arg.mailer, id="mailer", name=context.mailer),
            TaskSupervisor.child_spec(id="mailman_supervisor", name=context.tasks),
            LetterDeliveryDispatcher.child_spec(
                DynamicSupervisorSpec(), id="letter_delivery_dispatcher", name=context.dispatcher
            ),
            *arg.extra_children,
        ]
        return SupervisorSpec(
            children,
            strategy=Strategy.REST_FOR_ONE,
            max_restarts=arg.max_restarts,
            max_seconds=arg.max_seconds,
        )
