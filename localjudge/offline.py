"""Offline by construction: the switches that keep the model libraries from reaching a hub or sending usage
statistics, set when localjudge is imported, before any of them is (huggingface_hub, transformers and vLLM read
them once, at import). They are forced, not defaulted: an audit machine's environment cannot turn them off.

And the "this machine only" rule for what localjudge itself connects to or serves (the OpenAI-compatible judge's
server, the rating page): loopback, decided without resolving any name."""

from __future__ import annotations

import ipaddress
import os

OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",  # huggingface_hub: no request to the hub, local files only
    "TRANSFORMERS_OFFLINE": "1",  # transformers: the same, for older code paths
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "VLLM_NO_USAGE_STATS": "1",  # vLLM: no usage report
    "VLLM_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",  # the common opt-out vLLM and others honour
    "RAY_USAGE_STATS_ENABLED": "0",  # Ray (--ray): no usage report
}


def enforce() -> None:
    os.environ.update(OFFLINE_ENVIRONMENT)


enforce()


LOCALHOST_NAMES = {"localhost", "localhost."}


def loopback_address(host: str) -> str | None:
    """The numeric loopback address to connect to (or serve on) for `host`, decided without resolving any name:
    localhost is 127.0.0.1 (so no resolver, hosts file or search domain is ever asked), a loopback literal is
    itself. None for anything else, a scoped IPv6 address included."""
    if host.lower() in LOCALHOST_NAMES:
        return "127.0.0.1"
    if "%" in host:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return str(address) if address.is_loopback else None
