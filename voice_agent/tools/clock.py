"""The `current_time` tool: the date and time in the user's time zone, or in a named one.

The user's zone is TIME_ZONE, else the machine's local zone. Another zone is
named the IANA way ("Asia/Tokyo"); a few city and abbreviation names a model
tends to use ("Tokyo", "UTC", "PST") are understood too.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from voice_agent.tools.base import ToolContext, ToolError

# Short names models use for common zones; IANA names are always accepted.
ZONE_ALIASES = {
    "utc": "UTC", "gmt": "Etc/GMT", "z": "UTC", "est": "America/New_York",
    "edt": "America/New_York", "cst": "America/Chicago", "cdt": "America/Chicago",
    "mst": "America/Denver", "mdt": "America/Denver", "pst": "America/Los_Angeles",
    "pdt": "America/Los_Angeles", "cet": "Europe/Paris", "cest": "Europe/Paris",
    "bst": "Europe/London", "ist": "Asia/Kolkata", "jst": "Asia/Tokyo",
    "aest": "Australia/Sydney", "new york": "America/New_York", "san francisco": "America/Los_Angeles",
    "beijing": "Asia/Shanghai", "delhi": "Asia/Kolkata", "mumbai": "Asia/Kolkata",
}  # fmt: skip


def local_zone() -> tzinfo:
    """The machine's local time zone (a fixed offset when it has no IANA name)."""
    zone = datetime.now().astimezone().tzinfo
    return zone if zone is not None else UTC


def find_zone(name: str) -> tzinfo:
    """The zone for an IANA name, a listed alias or a city ("Tokyo" -> Asia/Tokyo).

    Raises:
        ToolError: no zone by that name.
    """
    text = name.strip()
    alias = ZONE_ALIASES.get(text.lower())
    if alias:
        return ZoneInfo(alias)
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    city = text.lower().replace(" ", "_")
    for zone in sorted(available_timezones()):
        if zone.lower().rsplit("/", 1)[-1] == city:
            return ZoneInfo(zone)
    raise ToolError(
        f"no time zone {text!r:.60}; use an IANA name such as Europe/Paris, Asia/Tokyo or UTC."
    )


def current_time(context: ToolContext, time_zone: str = "") -> dict[str, Any]:
    """The current date and time, in the user's time zone or in another one.

    Args:
        time_zone: leave empty for the user's own; or an IANA time zone (e.g. Asia/Tokyo)
            or city for the time there.
    """
    zone = find_zone(time_zone) if time_zone.strip() else (context.time_zone or local_zone())
    now = datetime.fromtimestamp(time.time(), zone)
    return {
        "date": f"{now:%A} {now.day} {now:%B %Y}",
        "time": f"{now:%H:%M}",
        "time_zone": getattr(zone, "key", None) or now.tzname() or str(zone),
        "utc_offset": f"{now:%z}"[:3] + ":" + f"{now:%z}"[3:],
        "iso": now.isoformat(timespec="seconds"),
    }
