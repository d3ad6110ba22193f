"""Judge through a local OpenAI-compatible server (`vllm serve`, llama.cpp's server, Ollama, `transformers serve`):
each image goes as a base64 PNG data URL, the answer is constrained with the standard JSON-schema response format,
and several requests are in flight at once.

Only loopback may be contacted unless the user names a host with --allow-host: an image sent to the wrong address
has left the building, so the address is checked before anything else happens, and no name is ever resolved to
decide it. Another host is reached over https only (--insecure-http to allow plain http). The client is the
standard library's http.client: no redirect is ever followed, nothing else is pulled in.

Servers differ in what they honour: vLLM and llama.cpp enforce `response_format`; `transformers serve` ignores it
(with a warning in its log), so answers from it are unconstrained and an unreadable one is stored as a parse
failure, never a low score."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..offline import loopback_address
from ..store import content_key
from .base import (Judge, JudgeError, JudgeIdentity, JudgeOutput, JudgeRequest, JudgeSpec, JudgeStopped,
                   JudgeUnavailable, vlm_hash)
from .parsing import JUDGMENT_SCHEMA

# A key some servers ask for (`vllm serve --api-key`); read from the environment so it never lands in the DB.
API_KEY_ENVIRONMENT = "LOCALJUDGE_API_KEY"


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str  # what is connected to: a loopback name is its number
    port: int
    path: str  # the base path, e.g. /v1
    server_name: str = ""  # the host as given: what an https certificate is checked against (default: host)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def check_endpoint(base_url: str | None, allowed_hosts: tuple[str, ...] = (), insecure_http: bool = False) -> Endpoint:
    """The server's address, refused unless it is loopback or a host the user allowed, and, for a host other than
    loopback, unless it is https (images and the API key would cross the network in the clear; --insecure-http
    allows it). A loopback endpoint holds the numeric address, so connecting to it resolves nothing; over https the
    name given is kept, to check the server's certificate against."""
    if not base_url:
        raise JudgeError("--judge openai needs --base-url, e.g. http://127.0.0.1:8000/v1")
    parts = urlsplit(base_url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise JudgeError(f"--base-url {base_url}: expected http://HOST:PORT/PATH")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise JudgeError(f"--base-url {base_url}: no credentials, query or fragment (the key goes in "
                         f"${API_KEY_ENVIRONMENT})")
    host = parts.hostname
    allowed = {h.lower().strip("[]") for h in allowed_hosts}
    address = loopback_address(host)
    if address is None and host.lower() not in allowed:
        raise JudgeError(f"--base-url {base_url}: {host} is not this machine, and images must not leave it. "
                         f"If that server is inside your network, allow it explicitly with --allow-host {host}")
    if address is None and parts.scheme == "http" and not insecure_http:
        raise JudgeError(f"--base-url {base_url}: plain http to {host}, another machine: images (and "
                         f"${API_KEY_ENVIRONMENT}) would cross the network unencrypted. Use https, or pass "
                         "--insecure-http if that network is yours to trust")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise JudgeError(f"--base-url {base_url}: {error}") from error
    return Endpoint(parts.scheme, address or host, port, parts.path.rstrip("/"), host)


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """https to an address already decided (a loopback name's number: nothing resolved), the certificate checked
    against the name the user gave (a certificate for "localhost" names no number)."""

    def __init__(self, address: str, server_name: str, port: int, timeout: float):
        super().__init__(server_name, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class ServerError(Exception):
    """An answer or a silence worth retrying (timeout, refused connection, 5xx, 429)."""


class RequestRejected(Exception):
    """A 4xx: the server refuses this request as it is; sending it again changes nothing."""


class OpenAIClient:
    """The few calls localjudge makes, over http.client; one connection per call, so threads share nothing."""

    def __init__(self, endpoint: Endpoint, timeout: float):
        self.endpoint = endpoint
        self.timeout = timeout
        key = os.environ.get(API_KEY_ENVIRONMENT)
        self.headers = {"Content-Type": "application/json", "Accept": "application/json",
                        **({"Authorization": f"Bearer {key}"} if key else {})}

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        endpoint = self.endpoint
        connection = (PinnedHTTPSConnection(endpoint.host, endpoint.server_name or endpoint.host, endpoint.port,
                                            self.timeout) if endpoint.scheme == "https"
                      else http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=self.timeout))
        url = f"{self.endpoint.url}{path}"
        try:
            connection.request(method, self.endpoint.path + path,
                               body=None if body is None else json.dumps(body), headers=self.headers)
            response = connection.getresponse()
            payload = response.read()
        except (socket.timeout, TimeoutError) as error:
            raise ServerError(f"{url}: no answer within {self.timeout:g} s") from error
        except (ConnectionError, OSError, http.client.HTTPException) as error:
            raise ServerError(f"{url}: {type(error).__name__}: {error}") from error
        finally:
            connection.close()
        if response.status >= 500 or response.status == 429:
            raise ServerError(f"{url}: HTTP {response.status}: {_message(payload)}")
        if response.status >= 400:
            raise RequestRejected(f"{url}: HTTP {response.status}: {_message(payload)}")
        try:
            return json.loads(payload)
        except json.JSONDecodeError as error:
            raise ServerError(f"{url}: answer is not JSON ({error})") from error

    def models(self) -> list[str]:
        try:
            listing = self.call("GET", "/models")
        except (ServerError, RequestRejected) as error:
            raise JudgeError(f"cannot list the server's models ({error}); is it running? "
                             "Or name the model with --api-model") from error
        entries = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(entries, list):
            raise JudgeError(f"{self.endpoint.url}/models: not an OpenAI model list; name the model with --api-model")
        return [m["id"] for m in entries if isinstance(m, dict) and isinstance(m.get("id"), str)]

    def answers(self) -> bool:
        """Whether the server answers at all (its model list), to tell a server that is down from one request
        it cannot serve."""
        try:
            self.call("GET", "/models")
            return True
        except (ServerError, RequestRejected):
            return False


def _message(payload: bytes) -> str:
    text = payload.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text)
        error = parsed.get("error", parsed.get("detail", parsed)) if isinstance(parsed, dict) else parsed
        if isinstance(error, dict):
            error = error.get("message", error)
        return str(error)[:500]
    except json.JSONDecodeError:
        return text.strip()[:500] or "(empty answer)"


def resolve_model(client: OpenAIClient, api_model: str | None) -> str:
    """The model to ask for: --api-model, or the one model the server lists."""
    if api_model:
        return api_model
    names = client.models()
    if len(names) != 1:
        listed = ", ".join(names) if names else "none"
        raise JudgeError(f"{client.endpoint.url} serves {len(names)} models ({listed}); choose one with --api-model")
    return names[0]


def data_url(image) -> str:
    # PNG: lossless, so the server's model sees exactly the pixels the other backends see.
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_body(model: str, request: JudgeRequest, max_new_tokens: int, temperature: float) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(request.image)}},
            {"type": "text", "text": request.prompt},
        ]}],
        "max_tokens": max_new_tokens,
        "temperature": temperature,
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "judgment", "schema": JUDGMENT_SCHEMA, "strict": True}},
    }


class OpenAISpec(JudgeSpec):
    name = "openai"
    needs_vlm = False  # --vlm DIR is optional: the weights the server loaded, hashed into the identity
    structured_output = "response-format-json-schema"  # asked for; whether it is honoured is up to the server

    def check(self, config, labels) -> None:
        super().check(config, labels)
        check_endpoint(config.base_url, config.allow_hosts, config.insecure_http)  # before any image is read

    def identity(self, config, hash_file) -> JudgeIdentity:
        """A server's weights cannot be seen from here: its judge is the model name it serves (asked once when
        --api-model is not given), plus the hash of --vlm DIR when the user points at the weights the server loaded.
        The server's address is not part of it (a restart on another port is the same judge); it is recorded with
        the run."""
        endpoint = check_endpoint(config.base_url, config.allow_hosts, config.insecure_http)
        served = resolve_model(OpenAIClient(endpoint, config.api_timeout), config.api_model)
        weights = vlm_hash(Path(config.vlm), hash_file) if config.vlm else None
        return JudgeIdentity(Path(served).name or served, "served:" + content_key("openai", served, weights), served)

    def open(self, config, identity: JudgeIdentity) -> Judge:
        return OpenAIJudge(config.base_url, api_model=identity.served_model or config.api_model,
                           allowed_hosts=config.allow_hosts, insecure_http=config.insecure_http,
                           max_new_tokens=config.max_new_tokens,
                           temperature=config.temperature, concurrency=config.api_concurrency,
                           timeout=config.api_timeout, retries=config.api_retries, backoff=config.api_backoff)


class OpenAIJudge(Judge):
    backend = "openai"

    def __init__(self, base_url: str, api_model: str | None = None, allowed_hosts: tuple[str, ...] = (),
                 insecure_http: bool = False, max_new_tokens: int = 512, temperature: float = 0.0, concurrency: int = 4,
                 timeout: float = 300.0, retries: int = 3, backoff: float = 1.0):
        self.endpoint = check_endpoint(base_url, allowed_hosts, insecure_http)
        self.client = OpenAIClient(self.endpoint, timeout)
        self.model = resolve_model(self.client, api_model)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.retries = retries
        self.backoff = backoff
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="localjudge-openai")
        self._closing = False

    def judge(self, requests: list[JudgeRequest]) -> list[JudgeOutput]:
        outputs = list(self._pool.map(self._one, requests))
        rejected = [o for o in outputs if o.rejected]
        if len(rejected) == len(outputs) > 1:
            # Every request refused is a setting to fix (model name, parameters), not one odd image: stop
            # before sending the rest of the dataset.
            raise JudgeStopped(f"the server refused every request: {rejected[0].error}", outputs)
        unanswered = [o for o in outputs if o.error and not o.rejected]
        if len(unanswered) == len(outputs) and not self.client.answers():
            raise JudgeUnavailable(outputs, unanswered[0].error)
        return outputs

    def _one(self, request: JudgeRequest) -> JudgeOutput:
        body = chat_body(self.model, request, self.max_new_tokens, self.temperature)
        for attempt in range(self.retries + 1):
            if self._closing:
                return JudgeOutput(raw_text="", input_tokens=None, output_tokens=None, error="not sent: run stopped")
            try:
                answer = self.client.call("POST", "/chat/completions", body)
                break
            except RequestRejected as error:
                return JudgeOutput(raw_text="", input_tokens=None, output_tokens=None, error=str(error),
                                   rejected=True)
            except ServerError as error:
                if attempt == self.retries:
                    return JudgeOutput(raw_text="", input_tokens=None, output_tokens=None,
                                       error=f"{error} (after {self.retries + 1} tries)")
                time.sleep(self.backoff * 2 ** attempt)
        try:
            choice = answer["choices"][0]
            text = choice["message"].get("content") or ""
            usage = answer.get("usage") or {}
            input_tokens, output_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
            finished = choice.get("finish_reason") != "length"
        except (KeyError, IndexError, TypeError, AttributeError):
            return JudgeOutput(raw_text=json.dumps(answer)[:2000], input_tokens=None, output_tokens=None,
                               error="the server's answer is not a chat completion (no choices[0].message)")
        return JudgeOutput(raw_text=text if isinstance(text, str) else json.dumps(text),
                           input_tokens=input_tokens if isinstance(input_tokens, int) else None,
                           output_tokens=output_tokens if isinstance(output_tokens, int) else None,
                           finished=finished)

    def close(self, cancel: bool = False) -> None:
        """Wait for requests in flight, or (cancel) send nothing more: queued requests are dropped and running
        ones stop retrying."""
        self._closing = cancel
        self._pool.shutdown(wait=not cancel, cancel_futures=cancel)


SPEC = OpenAISpec()
