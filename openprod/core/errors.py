"""The typed errors of the domain. Every refusal names its problem; callers map them to 4xx."""

from __future__ import annotations

from typing import Any


class OpenprodError(Exception):
    """Base of every error the domain raises on purpose."""

    code = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def with_code(self, code: str) -> OpenprodError:
        """Return self with a more specific error code (e.g. bad_digest for an integrity error)."""
        self.code = code
        return self


class CodecError(OpenprodError):
    code = "malformed"


class ValidationError(OpenprodError):
    """A command or payload that breaks a rule; nothing was written."""

    code = "invalid"


class Forbidden(OpenprodError):
    """The caller may not do this (e.g. only the workspace owner may)."""

    code = "forbidden"


class NotFound(OpenprodError):
    code = "not_found"


class EntityDeleted(ValidationError):
    code = "entity_deleted"


class EntityMerged(ValidationError):
    code = "entity_merged"


class ClockDriftError(OpenprodError):
    code = "future_hlc"


class HlcOverflow(OpenprodError):
    code = "hlc_overflow"


class IdentityError(OpenprodError):
    code = "identity"


class IntegrityError(OpenprodError):
    """Bytes that fail a signature, digest or workspace check: rejected, never settled."""

    code = "bad_signature"


class ContentError(OpenprodError):
    """A validly signed bundle whose payload breaks the rules: a settled rejection."""

    code = "content"


class EquivocationError(OpenprodError):
    code = "equivocation"


class StorageError(OpenprodError):
    code = "storage"

