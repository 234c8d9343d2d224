"""The probe set: prompts from the training and held-out splits, each with the paper's response families.

Built once per run from the preference data and saved with it (`probe_set.jsonl`), so that two runs can be compared on
exactly the same probes (`MonitorConfig.probe_set_path` loads a saved one back). The two model-derived families,
`greedy` and `argmax`, are not stored: they are recomputed from the model at every evaluation.

Probe splits are always labelled `train` and `test` in metric names, whatever the data's held-out split is called, so
that dashboards of runs on different data line up.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.jsonl import location, read_jsonl, write_jsonl_atomic
from alignkit.monitors.config import (
    ALL_FAMILIES,
    IRRELEVANT_FAMILIES,
    MODEL_FAMILIES,
    REWRITE_FAMILIES,
    MonitorConfig,
)
from alignkit.monitors.rephrase import Rephraser
from alignkit.sequences import Prompt, response_text, user_text

FORMAT_TAG = "alignkit_probe_set"
FORMAT_VERSION = 1
SPLITS = ("train", "test")


@dataclass
class Probe:
    probe_id: str  # "<split>/<row id>", unique within the set
    split: str  # "train" or "test"
    prompt: Prompt
    responses: dict[str, str]  # family -> response text, for the stored families this probe has


@dataclass
class ProbeSet:
    probes: list[Probe]
    families: list[str]  # families tracked, in canonical order; includes greedy/argmax when asked for
    notes: list[str] = field(default_factory=list)  # why a family is missing or smaller than asked

    def save(self, path: str | Path) -> Path:
        """Write the set as JSONL (atomically): a header line (families, notes), then one probe per line."""
        header = {FORMAT_TAG: FORMAT_VERSION, "families": self.families, "notes": self.notes}
        rows = [{"probe_id": p.probe_id, "split": p.split, "prompt": p.prompt, "responses": p.responses}
                for p in self.probes]  # fmt: skip
        return write_jsonl_atomic(path, [header, *rows])

    @classmethod
    def load(cls, path: str | Path) -> ProbeSet:
        """A set written by `save`; anything else raises naming the file, its line and the field."""
        path = Path(path)
        if not path.is_file():
            raise AlignkitError(f"probe set {path} does not exist (config field 'probe_set_path')")
        rows = read_jsonl(path)
        line, header = rows[0] if rows else (1, {})
        if header.get(FORMAT_TAG) != FORMAT_VERSION:
            raise AlignkitError(f"{location(path, line)}: not an alignkit probe set (this line lacks '{FORMAT_TAG}')")
        families = _checked(header, "families", list, path, line)
        if unknown := [f for f in families if f not in ALL_FAMILIES]:
            raise AlignkitError(f"{location(path, line, 'families')}: unknown families {unknown}")
        notes = _checked(header, "notes", list, path, line, default=[])
        probes, seen = [], {}
        for line, row in rows[1:]:
            probe_id = _checked(row, "probe_id", str, path, line)
            if probe_id in seen:
                raise AlignkitError(f"{location(path, line, 'probe_id')}: {probe_id!r} repeats line {seen[probe_id]}")
            seen[probe_id] = line
            split = _checked(row, "split", str, path, line)
            if split not in SPLITS:
                raise AlignkitError(f"{location(path, line, 'split')}: {split!r}; expected one of {', '.join(SPLITS)}")
            prompt = _checked(row, "prompt", (str, list), path, line)
            responses = _checked(row, "responses", dict, path, line)
            if bad := [f for f, text in responses.items() if f not in families or not isinstance(text, str)]:
                raise AlignkitError(
                    f"{location(path, line, 'responses')}: {bad[0]!r} is not a text of one of the header's families"
                )
            probes.append(Probe(probe_id, split, prompt, responses))
        return cls(probes, families, notes)

    def restricted_to(self, families: Sequence[str]) -> ProbeSet:
        """The same probes tracking only `families` (those this set has); e.g. a loaded set under a narrower config."""
        kept = [f for f in self.families if f in families]
        probes = [
            Probe(p.probe_id, p.split, p.prompt, {f: r for f, r in p.responses.items() if f in kept})
            for p in self.probes
        ]
        return ProbeSet(probes, kept, list(self.notes))

    def count(self, split: str) -> int:
        return sum(p.split == split for p in self.probes)


def _checked(row: dict, key: str, kind: type | tuple[type, ...], path: Path, line: int, default=None):
    """`row[key]` if it has type `kind`; else an error naming the file, the line and the field."""
    if key not in row and default is not None:
        return default
    if key not in row:
        raise AlignkitError(f"{location(path, line, key)}: missing")
    if not isinstance(row[key], kind):
        expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise AlignkitError(f"{location(path, line, key)}: expected {expected}, got {type(row[key]).__name__}")
    return row[key]


def _prompt_sentences(prompt: Prompt) -> list[str]:
    """Fluent human-written sentences of a prompt (its user turns), for the `irrelevant_human` family."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", user_text(prompt)) if len(s.split()) >= 3]


def _permuted_words(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) < 2 or len(set(words)) < 2:
        return text
    shuffled = words[:]
    while shuffled == words:  # a permutation equal to the original would not be a shuffled probe
        rng.shuffle(shuffled)
    return " ".join(shuffled)


def _length_matched(target_words: int, pool: list[tuple[int, str]], own_row: int, rng: random.Random) -> str | None:
    """A sentence (or two joined) from other rows with about `target_words` words."""
    candidates = [s for row, s in pool if row != own_row]
    if not candidates:
        return None
    rng.shuffle(candidates)  # ties are broken at random, not by data order
    candidates.sort(key=lambda s: abs(len(s.split()) - target_words))
    text = candidates[0]
    for extra in candidates[1:]:  # short prompts: join a second sentence rather than compare very unequal lengths
        if len(text.split()) >= 0.7 * target_words:
            break
        text = f"{text} {extra}"
    return text


def build_probe_set(
    train,
    heldout,
    config: MonitorConfig,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    rephraser=None,
) -> ProbeSet:
    """Draw `config.probe_num_prompts` prompts from `train` and as many from `heldout` and build their families.

    Args:
        train: the training split (a `datasets.Dataset` or a list of dicts) with `prompt`, `chosen`, `rejected` (may
            be missing, e.g. SFT data: then the rejected families are left out, with a note), and
            optionally `chosen_rephrase`, `rejected_rephrase`, `chosen_reformat`, `rejected_reformat`.
        heldout: the held-out split with the same columns, or None (then the `test` probes and `irrelevant_test`
            are left out, with a note, and `non_human` uses random words of the data).
        config: the monitor settings; with `probe_set_path` set, that saved set is loaded instead.
        seed: seeds the choice of prompts and every shuffle, so the same data gives the same probes.
        cache_dir: where generated rewrites are cached when `probe_rephrase_cache` is unset (default
            ~/.cache/alignkit); unused when the data has the rewrite columns.
        rephraser: a `Rephraser` writing the rewrite families missing from the data; built from the config's
            `probe_rephrase_*` fields when None and an endpoint is configured.
    """
    if config.probe_set_path:
        return ProbeSet.load(config.probe_set_path).restricted_to(config.probe_families)
    rng = random.Random(seed)
    wanted = config.probe_families
    notes: list[str] = []
    train_rows = _rows(train, "train")
    heldout_rows = _rows(heldout, "held-out") if heldout is not None else []
    if not heldout_rows:
        notes.append("no held-out split: only training-split probes; `irrelevant_test` left out")

    if rephraser is None and config.probe_rephrase_base_url and any(f in wanted for f in REWRITE_FAMILIES):
        rephraser = Rephraser.from_config(config, cache_dir)

    # Sentences for `irrelevant_human`, tagged with their row so a probe never gets its own prompt back.
    all_rows = train_rows + heldout_rows
    sentence_pool = [(i, s) for i, row in enumerate(all_rows) for s in _prompt_sentences(row["prompt"])]
    vocabulary = sorted({w for row in all_rows for w in response_text(row["chosen"]).split()})

    picked: list[tuple[str, int, dict]] = []  # (split, index in its split, row)
    for split, rows in (("train", train_rows), ("test", heldout_rows)):
        n = min(config.probe_num_prompts, len(rows))
        if rows and n < config.probe_num_prompts:
            notes.append(f"{split} split has {len(rows)} rows: {n} probes instead of {config.probe_num_prompts}")
        picked += [(split, i, rows[i]) for i in sorted(rng.sample(range(len(rows)), n))]

    rewrite_source: dict[str, str] = {}
    probes: list[Probe] = []
    for split, index, row in picked:
        chosen = response_text(row["chosen"])
        rejected = response_text(row["rejected"]) if row.get("rejected") is not None else None
        responses = {"chosen": chosen} | ({"rejected": rejected} if rejected is not None else {})
        for family in REWRITE_FAMILIES:
            if family not in wanted or (rejected is None and family.startswith("rejected")):
                continue
            if row.get(family):
                responses[family] = response_text(row[family])
                rewrite_source.setdefault(family, "data")
            elif rephraser is not None:
                base = chosen if family.startswith("chosen") else rejected
                if text := rephraser.rewrite(family.split("_")[1], row["prompt"], base):
                    responses[family] = text
                    rewrite_source.setdefault(family, "llm")
        own_global = index if split == "train" else len(train_rows) + index
        other_train = [i for i in range(len(train_rows)) if not (split == "train" and i == index)]
        if other_train:
            responses["irrelevant_train"] = response_text(train_rows[rng.choice(other_train)]["chosen"])
        other_test = [i for i in range(len(heldout_rows)) if not (split == "test" and i == index)]
        if other_test:
            responses["irrelevant_test"] = response_text(heldout_rows[rng.choice(other_test)]["chosen"])
        if human := _length_matched(len(chosen.split()), sentence_pool, own_global, rng):
            responses["irrelevant_human"] = human
        responses["shuffled"] = _permuted_words(chosen, rng)
        if "irrelevant_test" in responses:
            responses["non_human"] = _permuted_words(responses["irrelevant_test"], rng)
        elif vocabulary:  # no held-out answers to scramble: random words of the data, as long as y+
            responses["non_human"] = " ".join(rng.choice(vocabulary) for _ in chosen.split())
        row_id = row.get("id", f"row{index}")
        probes.append(
            Probe(f"{split}/{row_id}", split, row["prompt"], {f: responses[f] for f in responses if f in wanted})
        )

    has_rejected = any(row.get("rejected") is not None for row in all_rows)
    if "rejected" in wanted and not has_rejected:
        notes.append("`rejected` and its rewrites left out: the data has no rejected responses (e.g. SFT data)")
    for family in REWRITE_FAMILIES:
        if family.startswith("rejected") and not has_rejected:
            continue
        if family in wanted and family not in rewrite_source:
            notes.append(
                f"`{family}` left out: the data has no such column and no rewrite endpoint is configured "
                "(probe_rephrase_base_url)"
            )
        elif rewrite_source.get(family) == "llm":
            notes.append(f"`{family}` written by {config.probe_rephrase_model} at {config.probe_rephrase_base_url}")
    stored = {f for p in probes for f in p.responses}
    for family in IRRELEVANT_FAMILIES:
        if family in wanted and family not in stored and family != "irrelevant_test":
            notes.append(f"`{family}` left out: the data has too few rows to draw it from")
    families = [f for f in wanted if f in stored or f in MODEL_FAMILIES]
    if "argmax" in families and "chosen" not in stored:
        families.remove("argmax")
    return ProbeSet(probes, families, notes)


def _rows(data, name: str) -> list[dict]:
    rows = [dict(r) for r in data] if data is not None else []
    if rows:
        missing = [c for c in ("prompt", "chosen") if c not in rows[0]]
        if missing:
            raise AlignkitError(
                f"the {name} split has no column(s) {missing}: probes need prompt, chosen and (optionally) rejected"
            )
    return rows
