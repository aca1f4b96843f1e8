"""One bounded JSON GET for the live carbon-intensity providers, standard library only.

Every way the request can fail becomes an ``IntensityUnavailable`` whose ``reason`` names
the kind of failure ("timed out", "unreachable", "HTTP 503", "malformed JSON",
"response too large"), so that a caller can fall back, log once per kind, and say why.
Credentials go in headers that are never forwarded on a redirect and never appear in a
message.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from carbonedge.errors import IntensityUnavailable

__all__ = ["MAX_RESPONSE_BYTES", "get_json", "new_opener"]

# A latest-value answer is a few hundred bytes; a forecast a few tens of kB.
MAX_RESPONSE_BYTES = 1 << 20


def new_opener() -> urllib.request.OpenerDirector:
    """An opener of its own (honours the proxy environment as it is when built)."""
    return urllib.request.build_opener()


def _unavailable(what: str, detail: str, reason: str) -> IntensityUnavailable:
    return IntensityUnavailable(f"{what}: {detail}", reason=reason)


def _is_timeout(error: BaseException | str | None) -> bool:
    return isinstance(error, TimeoutError)


def get_json(
    opener: urllib.request.OpenerDirector,
    url: str,
    *,
    what: str,
    deadline: float,
    secret_headers: Mapping[str, str] | None = None,
) -> Any:
    """The decoded JSON body of ``GET url``, or ``IntensityUnavailable``.

    ``deadline`` is a ``time.monotonic()`` instant; the remaining time bounds each socket
    operation (connect, each read). ``what`` names the source in error messages (never
    the credentials). ``secret_headers`` are sent to ``url`` only, not to a redirect target.
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _unavailable(what, "no time left for the request", "timed out")
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "carbonedge"}
    )
    for name, value in (secret_headers or {}).items():
        request.add_unredirected_header(name, value)
    try:
        with opener.open(request, timeout=remaining) as response:
            raw = response.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as e:
        e.close()
        raise _unavailable(what, f"HTTP {e.code} {e.reason}", f"HTTP {e.code}") from None
    except urllib.error.URLError as e:
        if _is_timeout(e.reason):
            raise _unavailable(what, f"no answer within {remaining:.3g} s", "timed out") from e
        raise _unavailable(what, f"cannot connect ({e.reason})", "unreachable") from e
    except TimeoutError as e:
        raise _unavailable(what, f"no answer within {remaining:.3g} s", "timed out") from e
    except (http.client.HTTPException, OSError) as e:
        raise _unavailable(what, f"connection failed ({type(e).__name__}: {e})",
                           "unreachable") from e
    if len(raw) > MAX_RESPONSE_BYTES:
        raise _unavailable(what, f"response larger than {MAX_RESPONSE_BYTES} bytes",
                           "response too large")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _unavailable(what, f"response is not JSON ({e})", "malformed JSON") from None
