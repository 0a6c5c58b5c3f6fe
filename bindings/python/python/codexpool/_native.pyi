"""Type stubs of the native module behind ``codexpool`` (checked with ``mypy.stubtest``)."""

import builtins
import datetime
import os
import pathlib
from collections.abc import Callable
from typing import Any, Literal, final, overload

__version__: str
__all__ = [
    "__version__",
    "CodexPoolError",
    "NotFound",
    "InvalidInput",
    "Ambiguous",
    "Conflict",
    "NoAccountAvailable",
    "KeyRefused",
    "AuthError",
    "StoreError",
    "FileError",
    "ServerError",
    "Timeout",
    "CodexPoolWarning",
    "Pool",
    "AccountPool",
    "Account",
    "AccountRuntime",
    "ImportResult",
    "ImportReport",
    "LoginStart",
    "DeviceLogin",
    "LoginCompleted",
    "LoginInfo",
    "KeyStore",
    "Key",
    "CreatedKey",
    "UsageTracker",
    "AccountUsage",
    "WindowReading",
    "Credits",
    "PollResult",
    "LedgerRow",
    "TokenCounts",
    "RequestLog",
    "RequestLogEntry",
    "Server",
    "serve",
    "FakeOpenAi",
    "Reply",
]

_StrPath = str | os.PathLike[str]
_TimeArg = datetime.datetime | str | float
# A float is taken for a number setting when it is whole (600.0 is 600); 600.5 is InvalidInput.
_SettingValue = str | int | float | bool | os.PathLike[str] | None

# ----- errors -------------------------------------------------------------------------------

class CodexPoolError(Exception):
    """Base class of every codexpool error."""

class NotFound(CodexPoolError):
    """No account, key or sign-in matches the id (or id prefix)."""

    what: str | None
    id: str | None

class InvalidInput(CodexPoolError):
    """A value (an argument or a setting) is not acceptable; ``field`` names it."""

    field: str | None

class Ambiguous(InvalidInput):
    """An id prefix matches more than one record; ``candidates`` lists them."""

    candidates: list[str] | None

class Conflict(CodexPoolError):
    """The record already exists."""

class NoAccountAvailable(CodexPoolError):
    """No account can serve (none, none active, all exhausted, cooling down or busy)."""

    retry_at: datetime.datetime | None

class KeyRefused(CodexPoolError):
    """A platform key was refused (missing, unknown, disabled, expired, model not allowed)."""

class AuthError(CodexPoolError):
    """Sign-in or token refresh failed; from an import's ``take_over``, ``report`` is the
    import's report (the import stands; the failed results have ``take_over_error``, the
    others were taken over)."""

    report: ImportReport | None

class StoreError(CodexPoolError):
    """The database failed."""

class FileError(CodexPoolError):
    """A file could not be read or written; ``path`` names it."""

    path: str | None

class ServerError(CodexPoolError):
    """The server could not start or stop cleanly (e.g. the address is in use)."""

class Timeout(CodexPoolError):
    """A wait with a timeout ran out."""

class CodexPoolWarning(UserWarning):
    """Something to know that is not an error: an imported sign-in still shared with the Codex
    CLI, a setting that was adjusted."""

# ----- records (frozen; attributes are read-only; == and hash() agree) ---------------------

@final
class Account:
    """A pooled ChatGPT sign-in (no tokens: those never leave the pool except through ``export``)."""

    @property
    def id(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def email(self) -> str | None: ...
    @property
    def chatgpt_account_id(self) -> str | None: ...
    @property
    def chatgpt_user_id(self) -> str | None: ...
    @property
    def plan_type(self) -> str | None: ...
    @property
    def group(self) -> str | None: ...
    @property
    def tags(self) -> list[str]: ...
    @property
    def sort(self) -> int: ...
    @property
    def note(self) -> str | None: ...
    @property
    def status(self) -> str:
        """``active``, ``disabled``, ``needs_login`` or ``banned``."""
    @property
    def status_reason(self) -> str | None: ...
    @property
    def token_expires_at(self) -> datetime.datetime | None: ...
    @property
    def token_refreshed_at(self) -> datetime.datetime | None: ...
    @property
    def created_at(self) -> datetime.datetime: ...
    @property
    def updated_at(self) -> datetime.datetime: ...
    @property
    def last_used_at(self) -> datetime.datetime | None: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class AccountRuntime:
    """Runtime state of an account: requests in flight, cooldown, exhaustion."""

    @property
    def inflight(self) -> int: ...
    @property
    def cooldown_until(self) -> datetime.datetime | None: ...
    @property
    def exhausted_until(self) -> datetime.datetime | None: ...
    @property
    def usable(self) -> bool: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class ImportResult:
    """What happened to one imported account."""

    @property
    def source(self) -> str: ...
    @property
    def status(self) -> str:
        """``imported``, ``updated``, ``unchanged`` (the stored sign-in is the same or newer),
        ``skipped`` (not a usable sign-in) or ``failed`` (the database refused it); see
        ``reason``."""
    @property
    def reason(self) -> str | None: ...
    @property
    def account_id(self) -> str | None: ...
    @property
    def label(self) -> str | None: ...
    @property
    def warning(self) -> str | None: ...
    @property
    def codex_cli(self) -> bool:
        """The input was a Codex CLI sign-in, whose refresh token that CLI still holds."""
    @property
    def taken_over(self) -> bool:
        """An import with ``take_over`` refreshed this Codex CLI sign-in: codexpool holds the
        only live refresh token, and that CLI must sign in again."""
    @property
    def take_over_error(self) -> str | None:
        """An import with ``take_over`` could not refresh this Codex CLI sign-in: why. It stays
        imported, its refresh token still shared with that CLI."""
    @property
    def sign_in_dead(self) -> bool:
        """That refresh failed because the issuer declared the sign-in dead (expired, revoked,
        reused): trying again cannot help; the account needs a new sign-in."""
    def to_dict(self) -> dict[str, Any]: ...

@final
class ImportReport:
    """The results of an import, one per account found (or per unreadable file)."""

    @property
    def results(self) -> list[ImportResult]: ...
    @property
    def imported(self) -> int: ...
    @property
    def updated(self) -> int: ...
    @property
    def unchanged(self) -> int: ...
    @property
    def skipped(self) -> int: ...
    @property
    def failed(self) -> int: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class LoginCompleted:
    """A finished sign-in: the account created or updated."""

    @property
    def account(self) -> Account: ...
    @property
    def created(self) -> bool: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class LoginInfo:
    """Where a sign-in stands."""

    @property
    def state(self) -> str: ...
    @property
    def kind(self) -> str:
        """``browser`` or ``device``."""
    @property
    def status(self) -> str:
        """``pending``, ``claimed``, ``completed``, ``failed`` or ``cancelled``."""
    @property
    def account_id(self) -> str | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def created_at(self) -> datetime.datetime: ...
    @property
    def expires_at(self) -> datetime.datetime: ...
    @property
    def expired(self) -> bool: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class Key:
    """A platform key as stored: everything but the secret."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def hint(self) -> str: ...
    @property
    def model(self) -> str | None: ...
    @property
    def allowed_models(self) -> list[str]: ...
    @property
    def allowed_groups(self) -> list[str]: ...
    @property
    def reasoning_effort(self) -> str | None: ...
    @property
    def enabled(self) -> bool: ...
    @property
    def expires_at(self) -> datetime.datetime | None: ...
    @property
    def created_at(self) -> datetime.datetime: ...
    @property
    def updated_at(self) -> datetime.datetime: ...
    @property
    def last_used_at(self) -> datetime.datetime | None: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class CreatedKey:
    """A new key and its secret, shown here once (never in ``repr()`` or ``to_dict()``)."""

    @property
    def key(self) -> Key: ...
    @property
    def secret(self) -> str: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class WindowReading:
    """The latest reading of one usage window."""

    @property
    def kind(self) -> str:
        """``five_hour`` or ``weekly``."""
    @property
    def used_percent(self) -> float: ...
    @property
    def window_minutes(self) -> int: ...
    @property
    def resets_at(self) -> datetime.datetime | None: ...
    @property
    def source(self) -> str:
        """``poll``, ``headers`` or ``rate-limit``."""
    @property
    def observed_at(self) -> datetime.datetime: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class Credits:
    """Credit balance, as the backend reports it."""

    @property
    def balance(self) -> float | None: ...
    @property
    def has_credits(self) -> bool | None: ...
    @property
    def unlimited(self) -> bool | None: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class AccountUsage:
    """What is known of one account's usage."""

    @property
    def account_id(self) -> str: ...
    @property
    def five_hour(self) -> WindowReading | None: ...
    @property
    def weekly(self) -> WindowReading | None: ...
    @property
    def credits(self) -> Credits | None: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class PollResult:
    """One account's usage poll."""

    @property
    def account_id(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def plan_type(self) -> str | None: ...
    @property
    def windows(self) -> list[WindowReading]: ...
    @property
    def credits(self) -> Credits | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def error_kind(self) -> str | None: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class TokenCounts:
    """Token counts of one response."""

    @property
    def input_tokens(self) -> int: ...
    @property
    def cached_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def reasoning_tokens(self) -> int: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class LedgerRow:
    """One group's sums in the token ledger."""

    @property
    def group(self) -> str: ...
    @property
    def requests(self) -> int: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def cached_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def reasoning_tokens(self) -> int: ...
    @property
    def total_tokens(self) -> int: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class RequestLogEntry:
    """One client request."""

    @property
    def id(self) -> int: ...
    @property
    def request_id(self) -> str: ...
    @property
    def at(self) -> datetime.datetime: ...
    @property
    def key_id(self) -> str | None: ...
    @property
    def accounts_tried(self) -> list[str]: ...
    @property
    def account_id(self) -> str | None: ...
    @property
    def route(self) -> str: ...
    @property
    def model(self) -> str | None: ...
    @property
    def status(self) -> int: ...
    @property
    def stream(self) -> bool: ...
    @property
    def latency_ms(self) -> int: ...
    @property
    def ttfb_ms(self) -> int | None: ...
    @property
    def tokens(self) -> TokenCounts | None: ...
    @property
    def error_class(self) -> str | None: ...
    @property
    def fallback(self) -> bool: ...
    @property
    def body_preview(self) -> str | None: ...
    def to_dict(self) -> dict[str, Any]: ...

# ----- sign-in ------------------------------------------------------------------------------

@final
class LoginStart:
    """A started browser sign-in; a context manager that cancels it on exit unless it ended.

    A ``wait`` that ends by ``Timeout`` or ``KeyboardInterrupt`` cancels the sign-in, and so
    does garbage collection of a handle with a callback listener (freeing the listener's port).
    """

    @property
    def url(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def redirect_uri(self) -> str: ...
    @property
    def expires_at(self) -> datetime.datetime: ...
    @property
    def listen_addr(self) -> str | None: ...
    @property
    def browser_opened(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> LoginCompleted: ...
    def cancel(self) -> bool: ...
    def __enter__(self) -> LoginStart: ...
    def __exit__(self, *_exc: object) -> Literal[False]: ...

@final
class DeviceLogin:
    """A started device-code sign-in."""

    @property
    def verification_url(self) -> str: ...
    @property
    def user_code(self) -> str: ...
    @property
    def interval_secs(self) -> int: ...
    @property
    def state(self) -> str: ...
    @property
    def expires_at(self) -> datetime.datetime: ...
    def wait(self, timeout: float | None = None) -> LoginCompleted: ...

# ----- handles ------------------------------------------------------------------------------

@final
class AccountPool:
    """The accounts of a pool (``pool.accounts``)."""

    def list(
        self,
        *,
        group: str | None = None,
        tag: str | None = None,
        status: str | None = None,
        text: str | None = None,
    ) -> builtins.list[Account]: ...
    def get(self, id: str) -> Account: ...
    def __len__(self) -> int: ...
    def update(
        self,
        id: str,
        *,
        label: str = ...,
        group: str | None = ...,
        tags: builtins.list[str] | None = ...,
        note: str | None = ...,
        sort: int = ...,
    ) -> Account: ...
    def set_sort_orders(self, orders: dict[str, int]) -> builtins.list[Account]: ...
    def remove(self, id: str) -> Account: ...
    def enable(self, id: str) -> Account: ...
    def disable(self, id: str) -> Account: ...
    def runtime(self, id: str) -> AccountRuntime: ...
    def import_file(self, path: _StrPath, *, take_over: bool = False) -> ImportReport: ...
    def import_bytes(self, data: bytes, source: str = "bytes", *, take_over: bool = False) -> ImportReport: ...
    def import_text(self, text: str, source: str = "text", *, take_over: bool = False) -> ImportReport: ...
    @overload
    def export(
        self,
        path: None = None,
        *,
        group: str | None = None,
        tag: str | None = None,
        status: str | None = None,
        text: str | None = None,
    ) -> dict[str, Any]:
        """The export document (accounts with their tokens) as a dict."""
    @overload
    def export(
        self,
        path: _StrPath,
        *,
        group: str | None = None,
        tag: str | None = None,
        status: str | None = None,
        text: str | None = None,
    ) -> int:
        """Writes the export document to ``path`` (0600); returns the number of accounts."""
    def login_start(
        self,
        *,
        label: str | None = None,
        group: str | None = None,
        tags: builtins.list[str] | None = None,
        note: str | None = None,
        workspace_id: str | None = None,
        listen: bool = True,
        open_browser: bool = False,
    ) -> LoginStart: ...
    def login_complete(self, redirect_url: str) -> LoginCompleted: ...
    def login_status(self, state: str) -> LoginInfo: ...
    def login_cancel(self, state: str) -> bool: ...
    def login_wait(self, state: str, timeout: float | None = None) -> LoginCompleted: ...
    def device_start(
        self,
        *,
        label: str | None = None,
        group: str | None = None,
        tags: builtins.list[str] | None = None,
        note: str | None = None,
        workspace_id: str | None = None,
    ) -> DeviceLogin: ...

@final
class KeyStore:
    """The platform keys of a pool (``pool.keys``)."""

    def create(
        self,
        name: str,
        model: str | None = None,
        *,
        allowed_models: builtins.list[str] | None = None,
        allowed_groups: builtins.list[str] | None = None,
        reasoning_effort: str | None = None,
        expires_at: _TimeArg | None = None,
    ) -> CreatedKey: ...
    def list(self) -> builtins.list[Key]: ...
    def get(self, id: str) -> Key: ...
    def update(
        self,
        id: str,
        *,
        name: str = ...,
        model: str | None = ...,
        allowed_models: builtins.list[str] | None = ...,
        allowed_groups: builtins.list[str] | None = ...,
        reasoning_effort: str | None = ...,
        expires_at: _TimeArg | None = ...,
        enabled: bool = ...,
    ) -> Key:
        """Changes a key; an omitted keyword is left as it is. ``None`` clears ``model``,
        ``reasoning_effort``, ``expires_at`` and the lists; an empty ``model`` or
        ``reasoning_effort`` clears it too."""
    def enable(self, id: str) -> Key: ...
    def disable(self, id: str) -> Key: ...
    def delete(self, id: str) -> Key: ...
    def verify(self, secret: str) -> Key:
        """The key a secret belongs to; raises ``KeyRefused`` when it is unknown, disabled or
        expired. A key it accepts counts as used (``last_used_at``), as a request through the
        gateway does."""
    def __len__(self) -> int: ...

@final
class UsageTracker:
    """The usage figures of a pool (``pool.usage``)."""

    def list(self) -> builtins.list[AccountUsage]: ...
    def get(self, account_id: str) -> AccountUsage: ...
    def headroom(self, account_id: str) -> float | None: ...
    def exhausted_until(self, account_id: str) -> datetime.datetime | None: ...
    def refresh(
        self,
        account: str | None = None,
        progress: Callable[[int, int, PollResult | None], object] | None = None,
    ) -> builtins.list[PollResult]: ...
    def ledger(self, group_by: str = "account", since: _TimeArg | None = None) -> builtins.list[LedgerRow]: ...
    def fold_ledger(self, before: _TimeArg) -> int:
        """Folds the ledger's entries from the UTC days before the one ``before`` falls in into
        one entry per day, key, account, model and status (stamped with the day's start): every
        sum stays the same, a ``since`` inside a folded day leaves that day out. How many entries
        were folded. A server does this by itself for the days ``REQUEST_LOG_DAYS`` no longer
        keeps."""

@final
class RequestLog:
    """The request log of a pool (``pool.request_log``)."""

    def list(
        self,
        limit: int = 100,
        *,
        key_id: str | None = None,
        account_id: str | None = None,
        after_id: int | None = None,
        oldest_first: bool = False,
    ) -> builtins.list[RequestLogEntry]:
        """The newest ``limit`` rows, newest first (with ``oldest_first``, the oldest, oldest
        first). To follow the log, pass the last id seen as ``after_id`` with
        ``oldest_first=True`` and repeat until fewer than ``limit`` rows come back: newest
        first, more than ``limit`` new rows would leave a gap. A ``limit`` below 1 raises
        ``InvalidInput``."""
    def prune(self, before: _TimeArg) -> int:
        """Deletes the rows of requests that arrived before ``before``, oldest first; how many
        went (the newest row always stays). A server does this by itself for rows older than
        ``REQUEST_LOG_DAYS``."""

@final
class Pool:
    """A pool of ChatGPT (Codex) sign-ins, platform keys and usage over one database."""

    @staticmethod
    def open(db_path: _StrPath | None = None, **settings: _SettingValue) -> Pool: ...
    @staticmethod
    def in_memory(**settings: _SettingValue) -> Pool: ...
    @property
    def accounts(self) -> AccountPool: ...
    @property
    def keys(self) -> KeyStore: ...
    @property
    def usage(self) -> UsageTracker: ...
    @property
    def request_log(self) -> RequestLog: ...
    @property
    def db_path(self) -> pathlib.Path | None:
        """The database file, or ``None`` for a pool in memory."""
    def settings(self) -> dict[str, str]: ...
    def reload(self) -> None: ...
    def flush(self) -> None: ...
    def __enter__(self) -> Pool: ...
    def __exit__(self, *_exc: object) -> Literal[False]: ...

@final
class Server:
    """A running server (see ``serve``)."""

    @property
    def url(self) -> str: ...
    @property
    def base_url(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def rpc_token(self) -> str: ...
    @property
    def rpc_token_file(self) -> pathlib.Path | None: ...
    @property
    def running(self) -> bool: ...
    def stop(self) -> None: ...
    def __enter__(self) -> Server: ...
    def __exit__(self, *_exc: object) -> Literal[False]: ...

def serve(
    pool: Pool,
    addr: str = "127.0.0.1:0",
    *,
    rpc_token: str | None = None,
    background_tasks: bool = True,
    shutdown_grace: float = 30.0,
) -> Server: ...

# ----- codexpool.testing --------------------------------------------------------------------

@final
class Reply:
    """What the fake Codex backend answers to one model call."""

    @staticmethod
    def text(text: str) -> Reply: ...
    @staticmethod
    def deltas(deltas: list[str]) -> Reply: ...
    @staticmethod
    def reasoning_then_text(reasoning: str, text: str) -> Reply: ...
    @staticmethod
    def tool_call(call_id: str, name: str, arguments: str) -> Reply: ...
    @staticmethod
    def usage_limit_429(resets_in_secs: int = 3600) -> Reply: ...
    @staticmethod
    def rate_limit_429() -> Reply: ...
    @staticmethod
    def failed(code: str, message: str) -> Reply: ...
    @staticmethod
    def failed_after_text(deltas: list[str], code: str, message: str) -> Reply: ...
    @staticmethod
    def overloaded() -> Reply: ...
    @staticmethod
    def usage_limit_text() -> Reply: ...
    @staticmethod
    def status(status: int, body: str, content_type: str = "application/json") -> Reply: ...
    @staticmethod
    def unauthorized() -> Reply: ...
    @staticmethod
    def deactivated() -> Reply: ...
    @staticmethod
    def challenge_html() -> Reply: ...
    @staticmethod
    def cut_mid_stream(after_deltas: int) -> Reply: ...
    @staticmethod
    def incomplete(deltas: list[str], reason: str) -> Reply: ...
    @staticmethod
    def raw_sse(body: str) -> Reply: ...
    @staticmethod
    def hang_forever() -> Reply: ...
    def slow_first_byte(self, delay: float) -> Reply: ...
    def paced(self, interval: float) -> Reply: ...
    def with_usage(
        self,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> Reply: ...

@final
class FakeOpenAi:
    """A fake OpenAI on 127.0.0.1 (its own thread)."""

    def __new__(
        cls,
        *,
        openai_api_key: str | None = None,
        strict_requests: bool = True,
        instant: bool = False,
        workers: int = 1,
    ) -> FakeOpenAi: ...
    @staticmethod
    def start(
        *,
        openai_api_key: str | None = None,
        strict_requests: bool = True,
        instant: bool = False,
        workers: int = 1,
    ) -> FakeOpenAi: ...
    @property
    def url(self) -> str: ...
    @property
    def issuer(self) -> str: ...
    @property
    def usage_base_url(self) -> str: ...
    @property
    def codex_base_url(self) -> str: ...
    @property
    def openai_base_url(self) -> str: ...
    @property
    def openai_api_key(self) -> str: ...
    @property
    def client_id(self) -> str: ...
    @property
    def running(self) -> bool: ...
    def settings(self) -> dict[str, str]: ...
    def add_account(
        self,
        account_id: str,
        *,
        email: str | None = None,
        plan: str | None = None,
        user_id: str | None = None,
        label: str | None = None,
    ) -> dict[str, str]: ...
    def has_account(self, account_id: str) -> bool: ...
    def auth_json(self, account_id: str) -> dict[str, Any]: ...
    def current_tokens(self, account_id: str) -> dict[str, str]: ...
    def expire_access_token(self, account_id: str) -> None: ...
    def revoke_sessions(self, account_id: str) -> None: ...
    def refresh_count(self, account_id: str) -> int: ...
    def set_next_login(self, account_id: str) -> None: ...
    def fail_next_authorize(self, error: str, description: str) -> None: ...
    def approve_latest_device(self, account_id: str) -> bool: ...
    def auto_approve_device(self, after_polls: int, account_id: str) -> None: ...
    def set_usage(
        self,
        account_id: str,
        primary_used: float = 0.0,
        secondary_used: float = 0.0,
        *,
        plan: str | None = None,
        credits_balance: float = 0.0,
        limit_reached: bool = False,
    ) -> None: ...
    def push_reply(self, account_id: str, reply: Reply) -> None: ...
    def push_reply_any(self, reply: Reply) -> None: ...
    def set_default_reply(self, account_id: str, reply: Reply | None) -> None: ...
    def set_global_default_reply(self, reply: Reply | None) -> None: ...
    def push_openai_reply(self, reply: Reply) -> None: ...
    def pending_replies(self, account_id: str) -> int: ...
    def count(self, path: str) -> int: ...
    def requests(self, path: str | None = None) -> list[dict[str, Any]]: ...
    def clear_requests(self) -> None: ...
    def open_streams(self) -> int: ...
    def cancelled_streams(self) -> int: ...
    def wait_streams_closed(self, timeout: float = 5.0) -> bool: ...
    def stop(self) -> None: ...
    def __enter__(self) -> FakeOpenAi: ...
    def __exit__(self, *_exc: object) -> Literal[False]: ...
