"""codexpool: pool many ChatGPT (Codex) sign-ins behind one local OpenAI-compatible endpoint.

>>> import codexpool
>>> pool = codexpool.Pool.open("pool.db")                      # doctest: +SKIP
>>> pool.accounts.import_file("~/.codex/auth.json")            # doctest: +SKIP
>>> key = pool.keys.create("ci", model="gpt-5-codex")          # doctest: +SKIP
>>> with codexpool.serve(pool) as srv:                         # doctest: +SKIP
...     print(srv.base_url, key.secret)

Everything is implemented in Rust (codexpool-core and codexpool-gateway); this package is a thin
layer over them. Blocking calls release the GIL; objects may be shared between threads. Times are
timezone-aware UTC ``datetime.datetime`` objects. Errors derive from :class:`CodexPoolError`;
warnings (e.g. an imported sign-in still shared with the Codex CLI) are issued through
:mod:`warnings` as :class:`CodexPoolWarning`.
See :mod:`codexpool.testing` for a fake OpenAI to test against.
"""

from ._native import (
    Account as Account,
    AccountPool as AccountPool,
    AccountRuntime as AccountRuntime,
    AccountUsage as AccountUsage,
    Ambiguous as Ambiguous,
    AuthError as AuthError,
    CodexPoolError as CodexPoolError,
    CodexPoolWarning as CodexPoolWarning,
    Conflict as Conflict,
    CreatedKey as CreatedKey,
    Credits as Credits,
    DeviceLogin as DeviceLogin,
    FileError as FileError,
    ImportReport as ImportReport,
    ImportResult as ImportResult,
    InvalidInput as InvalidInput,
    Key as Key,
    KeyRefused as KeyRefused,
    KeyStore as KeyStore,
    LedgerRow as LedgerRow,
    LoginCompleted as LoginCompleted,
    LoginInfo as LoginInfo,
    LoginStart as LoginStart,
    NoAccountAvailable as NoAccountAvailable,
    NotFound as NotFound,
    PollResult as PollResult,
    Pool as Pool,
    RequestLog as RequestLog,
    RequestLogEntry as RequestLogEntry,
    Server as Server,
    ServerError as ServerError,
    StoreError as StoreError,
    Timeout as Timeout,
    TokenCounts as TokenCounts,
    UsageTracker as UsageTracker,
    WindowReading as WindowReading,
    __version__ as __version__,
    serve as serve,
)

__all__ = [
    "Account",
    "AccountPool",
    "AccountRuntime",
    "AccountUsage",
    "Ambiguous",
    "AuthError",
    "CodexPoolError",
    "CodexPoolWarning",
    "Conflict",
    "CreatedKey",
    "Credits",
    "DeviceLogin",
    "FileError",
    "ImportReport",
    "ImportResult",
    "InvalidInput",
    "Key",
    "KeyRefused",
    "KeyStore",
    "LedgerRow",
    "LoginCompleted",
    "LoginInfo",
    "LoginStart",
    "NoAccountAvailable",
    "NotFound",
    "PollResult",
    "Pool",
    "RequestLog",
    "RequestLogEntry",
    "Server",
    "ServerError",
    "StoreError",
    "Timeout",
    "TokenCounts",
    "UsageTracker",
    "WindowReading",
    "__version__",
    "serve",
]
