"""The OpenAI chat-completions shapes the gateway speaks, as pure functions: a request body in, a chain
query's parameters out; a settled query in, a completion (or its stream chunks) out.

The network answers one question per query, so the question is the last user message; earlier turns
and sampling settings (temperature, max_tokens, ...) are accepted and not used. What only LLM-Net
has (fee, respondents, rounds) rides in the `llmnet` extension object, in requests and responses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from llmnet.client.ask import AskResult

AUTO = "auto"
EXTENSION = "llmnet"
OWNER = "llmnet"


class ApiError(Exception):
    """An error in OpenAI's shape: HTTP status, message, type, and optional code and param."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """The gateway operator's defaults and ceilings for what a request may ask the key to pay for."""

    max_fee: int = 100_000
    max_fee_cap: int = 100_000
    k: int = 2
    rounds: int = 2
    max_k: int = 8
    max_rounds: int = 4


@dataclass(frozen=True)
class ChatRequest:
    model: str
    question: str
    stream: bool
    max_fee: int
    k: int
    rounds: int


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(t, str) for t in parts) and parts:
            return "\n".join(parts)  # type: ignore[arg-type]
    raise ApiError(400, "message content must be a string or a list of text parts", param="messages")


def _question(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        raise ApiError(400, "the last message must be the user's question", param="messages")
    question = _text(last.get("content")).strip()
    if not question:
        raise ApiError(400, "the question is empty", param="messages")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape: no valid text
        raise ApiError(400, "the question is not valid Unicode text", param="messages") from None
    return question


def _bounded(ext: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = ext.get(name, default)
    if type(value) is not int or not low <= value <= high:
        raise ApiError(400, f"{EXTENSION}.{name} must be an integer from {low} to {high}", param=f"{EXTENSION}.{name}")
    return value


def parse_chat(body: Any, limits: Limits) -> ChatRequest:
    """Check a /v1/chat/completions body. Raises ApiError(400) naming the first bad field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model must be a domain name or 'auto'", param="model")
    if type(body.get("n", 1)) is not int or body.get("n", 1) != 1:
        raise ApiError(400, "n must be 1: a query settles on one final answer", param="n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", param="stream")
    ext = body.get(EXTENSION, {})
    if not isinstance(ext, dict):
        raise ApiError(400, f"{EXTENSION} must be an object", param=EXTENSION)
    return ChatRequest(model=model, question=_question(body.get("messages")), stream=stream,
                       max_fee=_bounded(ext, "max_fee", limits.max_fee, 1, limits.max_fee_cap),
                       k=_bounded(ext, "k", limits.k, 1, limits.max_k),
                       rounds=_bounded(ext, "rounds", limits.rounds, 1, limits.max_rounds))


def models_list(domains: list[str]) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": d, "object": "model", "created": 0, "owned_by": OWNER}
                                       for d in [AUTO, *domains]]}


def completion_id(query_id: int) -> str:
    return f"chatcmpl-llmnet-{query_id}"


def outcome(result: AskResult) -> dict[str, Any]:
    """The extension a settled query adds to a completion: where to check it, and who earned what."""
    return {"query_id": result.query_id, "domain": result.domain, "settled_height": result.settled_height,
            "receipt": {"query_id": result.query_id, "verify": f"llmnet receipt verify {result.query_id}"},
            "scores": [a.score for a in result.answers], "answers": [asdict(a) for a in result.answers],
            "payouts": result.payouts, "refund": result.refund, "missed": result.missed,
            "provisional_answers": [asdict(p) for p in result.provisional]}


def completion(result: AskResult, created: int) -> dict[str, Any]:
    return {"id": completion_id(result.query_id), "object": "chat.completion", "created": created,
            "model": result.domain, "system_fingerprint": None, "usage": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.final_answer},
                         "finish_reason": "stop", "logprobs": None}],
            EXTENSION: outcome(result)}


def chunk(query_id: int, model: str, created: int, delta: dict[str, Any], finish: str | None = None,
          extension: dict[str, Any] | None = None) -> dict[str, Any]:
    """One server-sent event of a streamed completion."""
    body: dict[str, Any] = {"id": completion_id(query_id), "object": "chat.completion.chunk", "created": created,
                            "model": model, "system_fingerprint": None,
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    if extension is not None:
        body[EXTENSION] = extension
    return body
