"""mailman.rpc: how the host application and the CLI drive the daemon, over a Unix socket.

Newline-delimited JSON-RPC 2.0 (:mod:`~mailman.rpc.protocol`), a strict params model per method
(:mod:`~mailman.rpc.params`), the table that dispatches to the engine's :class:`Handlers`
(:mod:`~mailman.rpc.methods`), and the :class:`RpcServer` GenServer that owns the socket
(:mod:`~mailman.rpc.server`). The matching client is :class:`mailman.client.Client`.

Example::

    children = [..., RpcServer.child_spec(socket_path=path, handlers=engine, error_mapper=to_rpc_error)]

See also: the JSON-RPC 2.0 specification; :class:`Handlers` for each method's result shape.
"""

from mailman.rpc.methods import METHODS, ErrorMapper, Handlers, MethodSpec, MethodTable
from mailman.rpc.params import (
    MAX_RECIPIENTS,
    MAX_SUBSCRIBERS,
    LetterCancelParams,
    LetterCreateParams,
    LetterPauseParams,
    LetterResumeParams,
    LetterRetryFailedParams,
    LetterSendParams,
    LetterStatusParams,
    NewsletterCreateParams,
    Params,
    SubscriberParams,
    SubscribersAddParams,
    SystemConfigureParams,
    SystemHealthParams,
    SystemTreeParams,
)
from mailman.rpc.protocol import (
    JSONRPC_VERSION,
    MAX_LINE_BYTES,
    ErrorCode,
    Request,
    RequestId,
    Response,
    RpcError,
    encode_response,
    line_too_long,
    parse_request,
)
from mailman.rpc.server import (
    AlreadyRunningError,
    PeerCredentials,
    RpcServer,
    RpcServerConfig,
    RpcServerError,
    RpcServerInfo,
    parse_peer_credentials,
    peer_allowed,
)

__all__ = [
    "JSONRPC_VERSION",
    "MAX_LINE_BYTES",
    "MAX_RECIPIENTS",
    "MAX_SUBSCRIBERS",
    "METHODS",
    "AlreadyRunningError",
    "ErrorCode",
    "ErrorMapper",
    "Handlers",
    "LetterCancelParams",
    "LetterCreateParams",
    "LetterPauseParams",
    "LetterResumeParams",
    "LetterRetryFailedParams",
    "LetterSendParams",
    "LetterStatusParams",
    "MethodSpec",
    "MethodTable",
    "NewsletterCreateParams",
    "Params",
    "PeerCredentials",
    "Request",
    "RequestId",
    "Response",
    "RpcError",
    "RpcServer",
    "RpcServerConfig",
    "RpcServerError",
    "RpcServerInfo",
    "SubscriberParams",
    "SubscribersAddParams",
    "SystemConfigureParams",
    "SystemHealthParams",
    "SystemTreeParams",
    "encode_response",
    "line_too_long",
    "parse_peer_credentials",
    "parse_request",
    "peer_allowed",
]
