"""What every experiment writes besides its figures: provenance, JSON and CSV files.

Provenance is what a reader needs to judge a result from another machine: the CPU and
its core count, the library versions, the topology the nodes ran with.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from carbonedge.compose.topology import Topology

__all__ = ["host_estimated", "machine", "topology_info", "versions", "write_csv", "write_json"]

_PACKAGES = ("carbonedge", "torch", "torchvision", "timm", "celery", "redis", "codecarbon",
             "numpy", "matplotlib")


def machine() -> dict[str, Any]:
    """The host: CPU model, logical CPUs, memory, OS and Python."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "memory_bytes": memory,
            "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version()}


def versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on (``absent`` if not installed)."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def topology_info(topology: Topology, node_ids: Sequence[str]) -> dict[str, Any]:
    """The nodes as they ran: quota, memory limit, intensity provider, PUE."""
    nodes = []
    for node_id in node_ids:
        spec = topology.node(node_id)
        nodes.append({"node": node_id, "cpus": spec.cpus, "mem_limit_bytes": spec.mem_limit_bytes,
                      "carbon_intensity": dict(spec.intensity), "pue": spec.pue})
    return {"compose": topology.source.name, "version": topology.version, "nodes": nodes}


def host_estimated(emissions_csv: Path) -> bool:
    """Whether the carbon service measured the host with CodeCarbon's load model (no
    hardware counter), from the host rows of its emissions CSV."""
    from carbonedge.carbon.emissions_csv import read_rows

    try:
        return any(r.get("estimated") == "1" for r in read_rows(emissions_csv)
                   if r.get("row_type") == "host")
    except OSError:
        return False


def _clean(value: Any) -> Any:
    """JSON has no NaN: a missing figure is ``null``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(_clean(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> int:
    """Rows as CSV with a header (NaN as an empty cell); returns how many were written."""
    count = 0
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="raise")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if isinstance(v, float) and not math.isfinite(v) else v
                             for k, v in row.items()})
            count += 1
    return count
