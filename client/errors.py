"""The client's one exception type: a failed RPC, with the server's own words."""

from __future__ import annotations

import grpc


class ServerError(Exception):
    """An RPC failed: ``code`` is the gRPC status, ``message`` the server's details, verbatim.

    ``str(error)`` is ``"INVALID_ARGUMENT: <server message>"``, so a CLI can print it
    unchanged and a test can match the server's wording.
    """

    def __init__(self, code: grpc.StatusCode, message: str, rpc: str = "") -> None:
        self.code = code
        self.message = message
        self.rpc = rpc
        super().__init__(f"{code.name}: {message}")

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, rpc: str = "") -> ServerError:
        """Wrap a ``grpc.RpcError`` (which is also a ``grpc.Call``) raised by a stub."""
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "", rpc)
