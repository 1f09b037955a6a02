"""mailman.supervisor: Erlang/OTP supervision, ported faithfully to asyncio.

Processes with pids, mailboxes, links and monitors; GenServer; Supervisor with one_for_one,
one_for_all and rest_for_one; DynamicSupervisor; TaskSupervisor; Registry; PartitionSupervisor;
and events for every start, exit, restart and intensity trip. Names follow Elixir, in Python's
grammar. The library is domain-free: it imports nothing from the rest of mailman.

Example, from a plain script::

    import asyncio
    from mailman import supervisor as otp

    async def main() -> None:
        sup = await otp.Supervisor.start_link(
            otp.SupervisorSpec([Counter.child_spec(0, name="counter")],
                               strategy=otp.Strategy.ONE_FOR_ONE)
        )
        print(await otp.Supervisor.which_children(sup))
        await otp.Supervisor.stop(sup)

    asyncio.run(main())

See ``docs/otp-mapping.md`` for each concept's Erlang/Elixir counterpart and every deviation.
"""

from mailman.supervisor._child_spec import (
    BRUTAL_KILL,
    RESTARTING,
    BrutalKill,
    ChildCounts,
    ChildInfo,
    ChildSpec,
    ChildType,
    Restart,
    Restarting,
    StartFunction,
)
from mailman.supervisor._clock import INFINITY, Clock, ManualClock, MonotonicClock
from mailman.supervisor._dynamic_supervisor import DynamicSupervisor, DynamicSupervisorSpec
from mailman.supervisor._events import EventHandler, EventName, attach, detach, execute
from mailman.supervisor._exceptions import (
    AlreadyPresentError,
    AlreadyRegisteredError,
    AlreadyStartedError,
    CallExitError,
    CallingSelfError,
    CallTimeoutError,
    ChildNotFoundError,
    ChildRestartingError,
    ChildRunningError,
    MaxChildrenError,
    NoProcessError,
    NotAProcessError,
    ProcessExit,
    StartError,
    StartIgnored,
    StreamTimeoutError,
    SupervisionError,
    TaskExitError,
    TaskTimeoutError,
)
from mailman.supervisor._exit_reason import (
    KILL,
    KILLED,
    NOPROC,
    NORMAL,
    SHUTDOWN,
    TIMEOUT,
    Abnormal,
    Crash,
    ExitReason,
    Kill,
    Killed,
    NoProc,
    Normal,
    Shutdown,
    Timeout,
    is_expected,
)
from mailman.supervisor._gen_server import (
    IGNORE,
    NO_REPLY,
    From,
    GenServer,
    Ignore,
    Init,
    NoReply,
    Reply,
    Stop,
)
from mailman.supervisor._names import Name, ServerRef, Via, ViaModule, register, unregister, whereis
from mailman.supervisor._partition_supervisor import PartitionSupervisor
from mailman.supervisor._process import (
    DownMessage,
    ExitMessage,
    Pid,
    Ref,
    TimerRef,
    await_exit,
    cancel_timer,
    current_pid,
    demonitor,
    exit,  # noqa: A004 - Erlang's exit/2, meant to be used as otp.exit(pid, reason)
    exit_reason,
    is_alive,
    link,
    monitor,
    receive,
    self_pid,
    send,
    send_after,
    spawn,
    spawn_link,
    trap_exit,
    unlink,
)
from mailman.supervisor._registry import Keys, RegisterMessage, Registry, UnregisterMessage
from mailman.supervisor._restart_intensity import RestartIntensity
from mailman.supervisor._supervisor import (
    AutoShutdown,
    FailedToStartChild,
    Strategy,
    Supervisor,
    SupervisorSpec,
)
from mailman.supervisor._task import Exit, Ok, Task, TaskReply
from mailman.supervisor._task_stream import OnTimeout, TaskStream
from mailman.supervisor._task_supervisor import TaskSupervisor

__all__ = [
    "BRUTAL_KILL",
    "IGNORE",
    "INFINITY",
    "KILL",
    "KILLED",
    "NOPROC",
    "NORMAL",
    "NO_REPLY",
    "RESTARTING",
    "SHUTDOWN",
    "TIMEOUT",
    "Abnormal",
    "AlreadyPresentError",
    "AlreadyRegisteredError",
    "AlreadyStartedError",
    "AutoShutdown",
    "BrutalKill",
    "CallExitError",
    "CallTimeoutError",
    "CallingSelfError",
    "ChildCounts",
    "ChildInfo",
    "ChildNotFoundError",
    "ChildRestartingError",
    "ChildRunningError",
    "ChildSpec",
    "ChildType",
    "Clock",
    "Crash",
    "DownMessage",
    "DynamicSupervisor",
    "DynamicSupervisorSpec",
    "EventHandler",
    "EventName",
    "Exit",
    "ExitMessage",
    "ExitReason",
    "FailedToStartChild",
    "From",
    "GenServer",
    "Ignore",
    "Init",
    "Keys",
    "Kill",
    "Killed",
    "ManualClock",
    "MaxChildrenError",
    "MonotonicClock",
    "Name",
    "NoProc",
    "NoProcessError",
    "NoReply",
    "Normal",
    "NotAProcessError",
    "Ok",
    "OnTimeout",
    "PartitionSupervisor",
    "Pid",
    "ProcessExit",
    "Ref",
    "RegisterMessage",
    "Registry",
    "Reply",
    "Restart",
    "RestartIntensity",
    "Restarting",
    "ServerRef",
    "Shutdown",
    "StartError",
    "StartFunction",
    "StartIgnored",
    "Stop",
    "Strategy",
    "StreamTimeoutError",
    "SupervisionError",
    "Supervisor",
    "SupervisorSpec",
    "Task",
    "TaskExitError",
    "TaskReply",
    "TaskStream",
    "TaskSupervisor",
    "TaskTimeoutError",
    "Timeout",
    "TimerRef",
    "UnregisterMessage",
    "Via",
    "ViaModule",
    "attach",
    "await_exit",
    "cancel_timer",
    "current_pid",
    "demonitor",
    "detach",
    "execute",
    "exit",
    "exit_reason",
    "is_alive",
    "is_expected",
    "link",
    "monitor",
    "receive",
    "register",
    "self_pid",
    "send",
    "send_after",
    "spawn",
    "spawn_link",
    "trap_exit",
    "unlink",
    "unregister",
    "whereis",
]
