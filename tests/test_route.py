"""`llmnet ask --domain auto`: routing with the real packaged embedding model, and descriptions files."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmnet.client.route import Embedder, RouteError, choose, describe, load_descriptions

DOMAINS = ["island-herbalism", "kestrel-lang", "orbital-logistics"]
# Our own wording, in the style of a requester who does not know the domain names.
QUESTIONS = {
    "island-herbalism": ["Which Tolmarra herb helps with a cough?", "What colour are the flowers of the shore plant?",
                         "How should the root tea be prepared, and how much is a dose?",
                         "Who should avoid taking this remedy?", "Which compound in the leaf eases fever?",
                         "Where on the island does the healing moss grow?"],
    "kestrel-lang": ["Which keyword declares a constant in Kestrel?", "What does the compiler error NullPerch mean?",
                     "How do I add a dependency with the perch package manager?",
                     "Which standard library module reads files?", "What year was version 2 of the language released?",
                     "What type holds a list of integers?"],
    "orbital-logistics": ["How many hours does the trip from one station to the next take?",
                          "How many docking ports does the station have?", "Who commands the Veyra relay station?",
                          "What cargo may not be shipped without a permit from the Haulage Board?",
                          "What is the crew size of the polar orbit station?", "Which station was founded first?"],
}


@pytest.fixture(scope="module")
def embed() -> Embedder:
    return Embedder()


def test_questions_go_to_their_domain(embed: Embedder) -> None:
    descriptions = load_descriptions()
    wrong = [(q, domain, got) for domain, qs in QUESTIONS.items() for q in qs
             if (got := choose(q, DOMAINS, descriptions, embed).domain) != domain]
    # bench/domain_auto.py measures the same on all 628 training questions of data/domains.
    assert len(wrong) <= 2, wrong


def test_route_reports_every_candidate_best_first(embed: Embedder) -> None:
    route = choose("Which perch command installs a package in Kestrel?", DOMAINS, load_descriptions(), embed)
    assert route.domain == "kestrel-lang" and list(route.similarities)[0] == "kestrel-lang"
    assert sorted(route.similarities) == DOMAINS
    assert list(route.similarities.values()) == sorted(route.similarities.values(), reverse=True)
    # Only the chain's domains are candidates, and an undescribed one is matched by its name.
    only = choose("How do I bake sourdough bread?", ["kestrel-lang", "sourdough-baking"], load_descriptions(), embed)
    assert only.domain == "sourdough-baking" and set(only.similarities) == {"kestrel-lang", "sourdough-baking"}
    with pytest.raises(RouteError, match="no domains"):
        choose("anything", [], {}, embed)


def test_domains_file_extends_and_overrides(tmp_path: Path) -> None:
    extra = tmp_path / "d.toml"
    extra.write_text('[domains]\nkestrel-lang = "Birds of prey"\nsourdough-baking = "Bread made with wild yeast"\n')
    got = load_descriptions(extra)
    assert got["kestrel-lang"] == "Birds of prey" and got["sourdough-baking"].startswith("Bread")
    assert "Tolmarra" in got["island-herbalism"]
    assert describe("deep-sea_fishing", got) == "deep sea fishing"
    for text, message in (("[domains\n", "d.toml"), ('[domains]\nx = 3\n', "description string")):
        extra.write_text(text)
        with pytest.raises(RouteError, match=message):
            load_descriptions(extra)
    with pytest.raises(RouteError, match="cannot read domains file"):
        load_descriptions(tmp_path / "missing.toml")
