"""Offline by construction: the switches that keep the model libraries from reaching a hub or sending usage
statistics, set when localjudge is imported, before any of them is (huggingface_hub, transformers and vLLM read
them once, at import). They are forced, not defaulted: an audit machine's environment cannot turn them off."""

from __future__ import annotations

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
