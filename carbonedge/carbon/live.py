"""Live carbon-intensity providers: Electricity Maps and WattTime, over plain HTTPS.

Both sit behind a ``LiveValue`` cache (see ``live_cache``): cheap on every call, one
background refresh after ``cache_s``, a stale value served up to ``max_stale_s``, a
back-off of ``retry_s`` after a failure. A failure raises ``IntensityUnavailable``; wrap a
live provider in a ``fallback`` chain to keep serving a value.

- ``electricitymaps``: ``{provider: electricitymaps, zone: FR, token_env: EMAPS_TOKEN}``
  asks ``GET {base_url}/v3/carbon-intensity/latest?zone=FR`` with the ``auth-token``
  header and uses ``carbonIntensity`` (gCO2eq/kWh). ``token`` may be given inline instead
  of ``token_env`` (the name of an environment variable holding it).
- ``watttime``: ``{provider: watttime, region: CAISO_NORTH, username: me,
  password_env: WATTTIME_PASSWORD}`` logs in at ``GET {base_url}/login`` with HTTP basic
  auth (answer: ``{"token": ...}``), then asks ``GET {base_url}/v3/forecast?region=...&
  signal_type=co2_moer&horizon_hours=0`` with ``Authorization: Bearer <token>`` and uses
  the first point of ``data``: the marginal operating emissions rate (MOER) now, in
  lbs CO2/MWh (``meta.units`` = ``lbs_co2_per_mwh``), converted to g/kWh with
  0.45359237 (1 lb = 453.59237 g, 1 MWh = 1000 kWh). A 401 (expired token) logs in again
  once. WattTime's ``/v3/signal-index`` is not used: it is a 0-100 percentile of the last
  30 days, not an emission rate. Without a subscription, WattTime serves ``/v3/forecast``
  for ``CAISO_NORTH`` only.

Common options (seconds): ``timeout_s`` (2), ``cache_s`` (300), ``retry_s`` (60),
``max_stale_s`` (3600; 0 never serves a stale value). ``base_url`` defaults to the
public API.
"""

from __future__ import annotations

import base64
import math
import os
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from carbonedge.carbon._http import get_json, new_opener
from carbonedge.carbon.live_cache import LiveOptions, LiveValue
from carbonedge.carbon.providers import (
    IntensityReading,
    as_utc,
    check_keys,
    register_provider,
)
from carbonedge.carbon.units import CarbonIntensity
from carbonedge.errors import ConfigError, IntensityUnavailable

__all__ = [
    "ELECTRICITYMAPS_URL",
    "LBS_PER_MWH_TO_G_PER_KWH",
    "WATTTIME_URL",
    "ElectricityMapsProvider",
    "LiveProvider",
    "WattTimeProvider",
    "electricitymaps_provider",
    "watttime_provider",
]

ELECTRICITYMAPS_URL = "https://api.electricitymap.org"
WATTTIME_URL = "https://api.watttime.org"
LBS_PER_MWH_TO_G_PER_KWH = 0.45359237
_MOER_UNITS = "lbs_co2_per_mwh"

Clock = Callable[[], float]


@dataclass(eq=False)
class LiveProvider:
    """A provider whose value comes from a ``LiveValue``; ``label`` names the source."""

    label: str
    cache: LiveValue = field(repr=False)

    def intensity_at(self, when: datetime) -> IntensityReading:
        """The cached live value (a live source only knows "now", whatever ``when`` is)."""
        moment = as_utc(when)
        value, stale = self.cache.get()
        source = f"{self.label} (stale)" if stale else self.label
        return IntensityReading(value, source, moment)


# --- spec helpers -------------------------------------------------------------------------


def _text(spec: Mapping[str, Any], key: str, provider: str) -> str:
    value = spec.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{provider} provider: {key} must be a non-empty string, got "
                          f"{type(value).__name__}", field=key)
    return value.strip()


def _secret(spec: Mapping[str, Any], key: str, provider: str) -> str:
    """``spec[key]`` or the environment variable ``spec[key + "_env"]`` names; exactly one."""
    env_key = f"{key}_env"
    if (key in spec) == (env_key in spec):
        raise ConfigError(f"{provider} provider needs exactly one of {key} or {env_key}",
                          field=key)
    if key in spec:
        return _text(spec, key, provider)
    name = _text(spec, env_key, provider)
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"{provider} provider: environment variable {name} "
                          f"(from {env_key}) is not set", field=env_key)
    return value


def _base_url(spec: Mapping[str, Any], default: str, provider: str) -> str:
    url = spec.get("base_url", default)
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{provider} provider: base_url must be an http(s) URL, got {url!r}",
                          field="base_url")
    return url.rstrip("/")


def _field(body: Any, key: str, what: str) -> Any:
    if not isinstance(body, dict):
        raise IntensityUnavailable(f"{what}: expected a JSON object, got "
                                   f"{type(body).__name__}", reason="unexpected response")
    if body.get(key) is None:
        raise IntensityUnavailable(f"{what}: response has no {key}",
                                   reason=f"missing field {key}")
    return body[key]


def _live_intensity(value: Any, what: str) -> CarbonIntensity:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise IntensityUnavailable(f"{what}: {value!r} is not a finite number >= 0",
                                   reason="invalid value")
    return CarbonIntensity(float(value))


# --- Electricity Maps ---------------------------------------------------------------------


class ElectricityMapsProvider(LiveProvider):
    """Electricity Maps v3 latest carbon intensity of one zone."""


def electricitymaps_provider(spec: Mapping[str, Any], *,
                             clock: Clock = time.monotonic) -> ElectricityMapsProvider:
    """Build the ``electricitymaps`` provider of ``spec`` (nothing is fetched yet)."""
    name = "electricitymaps"
    check_keys(spec, {"zone"}, {"token", "token_env", "base_url"} | LiveOptions.KEYS)
    zone = _text(spec, "zone", name)
    token = _secret(spec, "token", name)
    options = LiveOptions.from_spec(spec, name)
    url = (f"{_base_url(spec, ELECTRICITYMAPS_URL, name)}/v3/carbon-intensity/latest?"
           f"{urllib.parse.urlencode({'zone': zone})}")
    label = f"{name}:{zone}"
    opener = new_opener()

    def fetch(deadline: float) -> CarbonIntensity:
        body = get_json(opener, url, what=label, deadline=deadline,
                        secret_headers={"auth-token": token})
        return _live_intensity(_field(body, "carbonIntensity", label), label)

    return ElectricityMapsProvider(label, LiveValue(label, fetch, options, clock))


@register_provider("electricitymaps")
def _electricitymaps(spec: Mapping[str, Any]) -> ElectricityMapsProvider:
    return electricitymaps_provider(spec)


# --- WattTime -----------------------------------------------------------------------------


class WattTimeProvider(LiveProvider):
    """WattTime v3 marginal CO2 rate (MOER) of one region, now, in gCO2/kWh."""


class _WattTimeSession:
    """Login token and data request; the token is re-fetched once on a 401."""

    def __init__(self, base: str, region: str, username: str, password: str,
                 label: str) -> None:
        self._login_url = f"{base}/login"
        query = urllib.parse.urlencode(
            {"region": region, "signal_type": "co2_moer", "horizon_hours": 0})
        self._data_url = f"{base}/v3/forecast?{query}"
        basic = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._basic = f"Basic {basic}"
        self._token: str | None = None
        self._label = label
        self._opener = new_opener()
        self.logins = 0

    def _login(self, deadline: float) -> str:
        what = f"{self._label} login"
        try:
            body = get_json(self._opener, self._login_url, what=what, deadline=deadline,
                            secret_headers={"Authorization": self._basic})
        except IntensityUnavailable as e:
            if e.reason in ("HTTP 401", "HTTP 403"):
                raise IntensityUnavailable(f"{what}: username or password refused "
                                           f"({e.reason})", reason="login refused") from None
            raise
        token = _field(body, "token", what)
        if not isinstance(token, str) or not token:
            raise IntensityUnavailable(f"{what}: token is not a string",
                                       reason="missing field token")
        self.logins += 1
        self._token = token
        return token

    def _data(self, token: str, deadline: float) -> Any:
        return get_json(self._opener, self._data_url, what=self._label, deadline=deadline,
                        secret_headers={"Authorization": f"Bearer {token}"})

    def fetch(self, deadline: float) -> CarbonIntensity:
        token = self._token or self._login(deadline)
        try:
            body = self._data(token, deadline)
        except IntensityUnavailable as e:
            if e.reason != "HTTP 401":
                raise
            self._token = None  # expired (tokens last 30 min): log in again, once
            body = self._data(self._login(deadline), deadline)
        meta = body.get("meta") if isinstance(body, dict) else None
        units = meta.get("units") if isinstance(meta, dict) else None
        if units is not None and units != _MOER_UNITS:
            raise IntensityUnavailable(f"{self._label}: units {units!r}, expected "
                                       f"{_MOER_UNITS!r}", reason="unexpected units")
        points = _field(body, "data", self._label)
        if not isinstance(points, list) or not points:
            raise IntensityUnavailable(f"{self._label}: data holds no points",
                                       reason="missing field data")
        moer = _live_intensity(_field(points[0], "value", self._label), self._label)
        return CarbonIntensity(moer.g_per_kwh * LBS_PER_MWH_TO_G_PER_KWH)


def watttime_provider(spec: Mapping[str, Any], *,
                      clock: Clock = time.monotonic) -> WattTimeProvider:
    """Build the ``watttime`` provider of ``spec`` (nothing is fetched yet)."""
    name = "watttime"
    check_keys(spec, {"region", "username"},
                {"password", "password_env", "base_url"} | LiveOptions.KEYS)
    region = _text(spec, "region", name)
    username = _text(spec, "username", name)
    password = _secret(spec, "password", name)
    options = LiveOptions.from_spec(spec, name)
    label = f"{name}:{region}"
    session = _WattTimeSession(_base_url(spec, WATTTIME_URL, name), region, username,
                               password, label)
    return WattTimeProvider(label, LiveValue(label, session.fetch, options, clock))


@register_provider("watttime")
def _watttime(spec: Mapping[str, Any]) -> WattTimeProvider:
    return watttime_provider(spec)
