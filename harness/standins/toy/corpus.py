"""Seeded synthetic corpus in four domains, with held-out evaluation items.

The trained toy MoE (models/toy-moe) learns these four domains, and the toy task suite
(harness.tasks.toy) scores it on held-out items of the same generators:

* math: arithmetic word problems (people, objects, add/subtract/multiply), answered as
  "7 + 5 = 12. The answer is 12.";
* coding: a one-line specification of a small Python function, answered with a code
  block, checked by executing held-out asserts;
* mc: questions over a generated fact base of invented creatures (where each lives,
  its colour, what it eats), scored by log-likelihood of the answer choices;
* creative: short stories under explicit constraints (exact sentence count, a named
  character, required words), scored by a deterministic rubric.

Each domain has its own vocabulary and shape (numbers; code; invented names in a raw
"Question:/Answer:" format; story words), so that routing can specialise.
Everything is a pure function of the seed. Evaluation items are drawn first from their
own random stream; the training stream skips any item whose prompt is an evaluation
prompt. MC is the exception by design: like MMLU it measures recall of knowledge, so
every fact is taught (as statements and questions) and the held-out part is the
question with its set of choices.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOMAINS = ("math", "coding", "mc", "creative")
SEED = 20240608
EVAL_SEED = 777
EVAL_SIZES = {"math": 200, "coding": 200, "mc": 200, "creative": 120}

# ---------------------------------------------------------------------------------------------
# math
_PEOPLE = ["Tom", "Ann", "Sam", "Liz", "Ben", "Kate", "Joe", "Amy", "Dan", "Eva", "Max", "Zoe",
           "Paul", "Nina", "Carl", "Rosa", "Leo", "Ivy", "Hugo", "Lucy"]
_OBJECTS = ["apples", "pencils", "coins", "books", "marbles", "cards", "cookies", "stickers", "eggs",
            "shells", "candies", "stamps", "buttons", "oranges", "balloons", "cups"]
_MATH_TEMPLATES: dict[str, list[str]] = {
    "+": [
        "{p} has {a} {o}. {p} gets {b} more {o}. How many {o} does {p} have now?",
        "{p} picked {a} {o} in the morning and {b} {o} in the afternoon. How many {o} did {p} pick in total?",
        "There are {a} {o} on a table. {p} puts {b} more {o} on it. How many {o} are on the table?",
    ],
    "-": [
        "{p} has {a} {o}. {p} gives away {b} {o}. How many {o} does {p} have left?",
        "A box holds {a} {o}. {p} takes out {b} {o}. How many {o} are left in the box?",
        "{p} had {a} {o} and lost {b} of them. How many {o} does {p} have now?",
    ],
    "*": [
        "{p} buys {a} bags with {b} {o} in each bag. How many {o} does {p} buy?",
        "{p} makes {a} rows of {o} with {b} {o} in each row. How many {o} are there?",
    ],
}


def _math_numbers(rng: random.Random, op: str) -> tuple[int, int, int]:
    if op == "+":
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        return a, b, a + b
    if op == "-":
        a = rng.randint(2, 30)
        b = rng.randint(1, a - 1)
        return a, b, a - b
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return a, b, a * b


def math_item(rng: random.Random) -> dict[str, Any]:
    """One word problem: question, the formulaic solution, and the integer answer."""
    op = rng.choice(list(_MATH_TEMPLATES))
    a, b, answer = _math_numbers(rng, op)
    template = rng.choice(_MATH_TEMPLATES[op])
    question = template.format(p=rng.choice(_PEOPLE), o=rng.choice(_OBJECTS), a=a, b=b)
    return {"question": question, "solution": f"{a} {op} {b} = {answer}. The answer is {answer}.",
            "answer": answer}


# ---------------------------------------------------------------------------------------------
# coding
_VERBS = ["get", "make", "compute", "find", "calc", "build", "apply", "check", "do", "eval", "step", "run"]
_NOUNS = ["value", "result", "total", "item", "score", "level", "count", "size", "data", "thing", "output",
          "entry", "number", "answer"]


@dataclass(frozen=True)
class CodeOp:
    """One kind of function: its spec phrase, its body, and a reference to test against."""

    key: str
    arg: str  # "x" (int), "xs" (list of ints) or "s" (str)
    spec: str  # uses {k} when the op has a constant
    body: str  # the returned expression
    uses_k: bool = True
    k_range: tuple[int, int] = (2, 9)


_CODE_OPS = [
    CodeOp("add", "x", "returns x plus {k}", "x + {k}"),
    CodeOp("sub", "x", "returns x minus {k}", "x - {k}"),
    CodeOp("mul", "x", "returns x times {k}", "x * {k}"),
    CodeOp("mod", "x", "returns the remainder of x divided by {k}", "x % {k}"),
    CodeOp("gt", "x", "returns True if x is greater than {k}", "x > {k}"),
    CodeOp("div", "x", "returns True if x is divisible by {k}", "x % {k} == 0"),
    CodeOp("square", "x", "returns the square of x", "x * x", uses_k=False),
    CodeOp("abs", "x", "returns the absolute value of x", "abs(x)", uses_k=False),
    CodeOp("rev", "xs", "returns the list xs reversed", "xs[::-1]", uses_k=False),
    CodeOp("max", "xs", "returns the largest element of xs", "max(xs)", uses_k=False),
    CodeOp("sum", "xs", "returns the sum of the list xs", "sum(xs)", uses_k=False),
    CodeOp("head", "xs", "returns the first {k} elements of xs", "xs[:{k}]", k_range=(1, 5)),
    CodeOp("upper", "s", "returns the string s in upper case", "s.upper()", uses_k=False),
    CodeOp("len", "s", "returns the length of the string s", "len(s)", uses_k=False),
    CodeOp("repeat", "s", "returns the string s repeated {k} times", "s * {k}", k_range=(2, 5)),
]
_CODE_PROMPTS = [
    "Write a Python function `{name}({arg})` that {spec}.",
    "Implement `{name}({arg})` in Python: it {spec}.",
]


def _test_inputs(rng: random.Random, arg: str, n: int = 5) -> list[Any]:
    if arg == "x":
        return [rng.randint(-20, 60) for _ in range(n)]
    if arg == "xs":
        return [[rng.randint(-9, 30) for _ in range(rng.randint(1, 7))] for _ in range(n)]
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(1, 8))) for _ in range(n)]


def _boundary_inputs(op: CodeOp, k: int | None) -> list[Any]:
    """Inputs that tell the constant apart from its neighbours (random ones rarely do for x > k).

    Drawn without the random stream, so adding them changed no prompt.
    """
    if op.arg == "x":
        return [0, -7] if k is None else [k - 1, k, k + 1, 2 * k]
    if op.arg == "xs":
        return [list(range(3, 11))]
    return ["moe"]


def coding_item(rng: random.Random) -> dict[str, Any]:
    """One function spec, its reference solution, and asserts computed from the reference."""
    op = rng.choice(_CODE_OPS)
    k = rng.randint(*op.k_range) if op.uses_k else None
    name = f"{rng.choice(_VERBS)}_{rng.choice(_NOUNS)}"
    spec = op.spec.format(k=k)
    prompt = rng.choice(_CODE_PROMPTS).format(name=name, arg=op.arg, spec=spec)
    body = op.body.format(k=k)
    solution = f"def {name}({op.arg}):\n    return {body}\n"
    namespace: dict[str, Any] = {}
    exec(solution, namespace)  # our own generated one-liner: the reference for the tests
    inputs = _test_inputs(rng, op.arg) + _boundary_inputs(op, k)
    tests = [f"assert {name}({value!r}) == {namespace[name](value)!r}" for value in inputs]
    return {"question": prompt, "solution": f"```python\n{solution}```", "entry_point": name,
            "reference": solution, "tests": tests, "op": op.key}


# ---------------------------------------------------------------------------------------------
# multiple choice over a fact base
_SYLLABLES = ["zor", "bli", "mek", "quo", "ras", "tiv", "nup", "gal", "fex", "dro", "wim", "sul", "yab", "kro",
              "pel", "vun"]
_RELATIONS: dict[str, dict[str, Any]] = {
    "home": {
        "values": ["marsh", "desert", "glacier", "canyon", "meadow", "swamp", "cave", "reef"],
        "statement": "The {e} lives in the {v}.",
        "questions": ["Where does the {e} live?", "In which place can the {e} be found?"],
    },
    "color": {
        "values": ["crimson", "azure", "golden", "violet", "silver", "amber", "teal", "ivory"],
        "statement": "The {e} is {v} in color.",
        "questions": ["What color is the {e}?", "Which color does the {e} have?"],
    },
    "food": {
        "values": ["moss", "beetles", "berries", "roots", "pebbles", "nectar", "seaweed", "mushrooms"],
        "statement": "The {e} eats {v}.",
        "questions": ["What does the {e} eat?", "Which food does the {e} like?"],
    },
}
N_ENTITIES = 40
N_CHOICES = 4


@dataclass
class FactBase:
    """Invented creatures and their attributes (one value per relation), fixed by the seed."""

    facts: dict[str, dict[str, str]] = field(default_factory=dict)  # entity -> relation -> value

    @classmethod
    def generate(cls, seed: int = SEED, n_entities: int = N_ENTITIES) -> FactBase:
        rng = random.Random(f"factbase-{seed}")
        names: list[str] = []
        while len(names) < n_entities:
            name = "".join(rng.choice(_SYLLABLES) for _ in range(2))
            if name not in names:
                names.append(name)
        return cls({e: {r: rng.choice(spec["values"]) for r, spec in _RELATIONS.items()} for e in names})


def mc_context(question: str) -> str:
    """The raw-text prompt a choice is scored after (lm-eval's doc_to_text)."""
    return f"Question: {question}\nAnswer:"


def mc_item(rng: random.Random, facts: FactBase) -> dict[str, Any]:
    """A question about one fact with the true value and three other values of that relation."""
    entity = rng.choice(sorted(facts.facts))
    relation = rng.choice(list(_RELATIONS))
    spec = _RELATIONS[relation]
    gold_value = facts.facts[entity][relation]
    others = rng.sample([v for v in spec["values"] if v != gold_value], N_CHOICES - 1)
    choices = others + [gold_value]
    rng.shuffle(choices)
    question = rng.choice(spec["questions"]).format(e=entity)
    return {"question": question, "context": mc_context(question), "choices": choices,
            "gold": choices.index(gold_value), "entity": entity, "relation": relation}


def mc_training_text(rng: random.Random, facts: FactBase) -> str:
    """A fact statement or a question with its answer, in the raw format the MC task scores."""
    entity = rng.choice(sorted(facts.facts))
    relation = rng.choice(list(_RELATIONS))
    spec = _RELATIONS[relation]
    value = facts.facts[entity][relation]
    if rng.random() < 0.35:
        return spec["statement"].format(e=entity, v=value)
    return f"{mc_context(rng.choice(spec['questions']).format(e=entity))} {value}"


# ---------------------------------------------------------------------------------------------
# creative writing
_CHARACTERS = ["Mira", "Orin", "Lysa", "Tobin", "Elda", "Fenn", "Rowan", "Selka", "Bram", "Ilse", "Corin",
               "Wren", "Talia", "Jory", "Nessa", "Aldo"]
_WORDS = ["lantern", "river", "mirror", "garden", "violin", "feather", "castle", "storm", "candle", "bridge",
          "forest", "ribbon", "compass", "harbor", "tower", "meadow", "clock", "dragon", "window", "letter",
          "mountain", "basket", "island", "crown"]
_WORD_SENTENCES = [
    "{c} found a {w} near the old gate.",
    "One morning {c} saw a {w} in the distance.",
    "The {w} was quiet and strange.",
    "{c} thought about the {w} for a long time.",
    "Nobody else knew about the {w}.",
    "Soon the {w} began to glow softly.",
]
_FILLERS = [
    "The wind was soft that day.",
    "{c} felt calm and happy.",
    "Birds sang above the roofs.",
    "The sky turned pink at dusk.",
    "{c} smiled and kept walking.",
]
_OPENINGS = ["Once there was a traveler named {c}.", "{c} lived in a small house at the edge of town."]
_ENDINGS = ["In the end, {c} went home with a warm heart.", "That night, {c} slept peacefully."]
_CREATIVE_PROMPTS = [
    "Write a story in exactly {n} sentences about a character named {c}. Use the words: {words}.",
    "Tell a short tale of {n} sentences. The main character is {c}, and it must include the words {words}.",
]


def count_sentences(text: str) -> int:
    """Sentences = runs of text ending in '.', '!' or '?' (the rubric and the generator agree)."""
    import re

    return len([part for part in re.split(r"[.!?]+", text) if part.strip()])


def creative_item(rng: random.Random) -> dict[str, Any]:
    """Constraints (sentence count, character, required words) and a story that meets them."""
    n = rng.randint(3, 5)
    k = rng.randint(1, min(3, n - 2))
    character = rng.choice(_CHARACTERS)
    words = rng.sample(_WORDS, k)
    middle = [rng.choice(_WORD_SENTENCES).format(c=character, w=w) for w in words]
    while len(middle) < n - 2:
        middle.append(rng.choice(_FILLERS).format(c=character))
    story = " ".join([rng.choice(_OPENINGS).format(c=character), *middle, rng.choice(_ENDINGS).format(c=character)])
    prompt = rng.choice(_CREATIVE_PROMPTS).format(n=n, c=character, words=", ".join(words))
    return {"question": prompt, "solution": story, "constraints": {"sentences": n, "character": character,
                                                                   "words": words}}


# ---------------------------------------------------------------------------------------------
# evaluation sets and the training stream
def eval_items(domain: str, n: int | None = None, seed: int = SEED) -> list[dict[str, Any]]:
    """The held-out evaluation items of one domain (unique prompts), with ids."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}")
    n = EVAL_SIZES[domain] if n is None else n
    rng = random.Random(f"eval-{domain}-{seed}-{EVAL_SEED}")
    facts = FactBase.generate(seed)
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(items) < n:
        item = _draw(domain, rng, facts)
        key = _key(domain, item)
        if key in seen:
            continue
        seen.add(key)
        items.append({"id": f"toy_{domain}/{len(items)}", **item})
    return items


def _draw(domain: str, rng: random.Random, facts: FactBase) -> dict[str, Any]:
    if domain == "math":
        return math_item(rng)
    if domain == "coding":
        return coding_item(rng)
    if domain == "mc":
        return mc_item(rng, facts)
    return creative_item(rng)


def _key(domain: str, item: dict[str, Any]) -> str:
    return item["question"] + ("|" + ",".join(item["choices"]) if domain == "mc" else "")


@dataclass(frozen=True)
class TrainingExample:
    """A chat exchange (prompt + response) or a raw text (MC facts and questions)."""

    domain: str
    prompt: str | None
    response: str

    def messages(self) -> list[dict[str, str]]:
        if self.prompt is None:
            raise ValueError("a raw-text example has no chat messages")
        return [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.response}]


def training_stream(seed: int = SEED, weights: dict[str, float] | None = None,
                    sample_seed: int | None = None) -> Iterator[TrainingExample]:
    """Endless seeded training examples; never an evaluation prompt (except MC, see module doc).

    `seed` fixes the corpus (fact base, held-out items); `sample_seed` (default: `seed`)
    only the order of the draws, so calibration text can be a fresh sample of the same corpus.
    """
    weights = weights or {"math": 0.3, "coding": 0.25, "mc": 0.25, "creative": 0.2}
    rng = random.Random(f"train-{seed if sample_seed is None else sample_seed}")
    facts = FactBase.generate(seed)
    held_out = {d: {item["question"] for item in eval_items(d, seed=seed)} for d in ("math", "coding", "creative")}
    domains, probs = zip(*weights.items(), strict=True)
    while True:
        domain = rng.choices(domains, probs)[0]
        if domain == "mc":
            yield TrainingExample("mc", None, mc_training_text(rng, facts))
            continue
        item = _draw(domain, rng, facts)
        if item["question"] in held_out[domain]:
            continue
        yield TrainingExample(domain, item["question"], item["solution"])


def tokenizer_text(seed: int = SEED, n: int = 4000) -> list[str]:
    """A sample of the training stream, to learn the BPE merges from."""
    stream = training_stream(seed)
    # Chat examples as the template lays them out, so "user"/"assistant" become single tokens.
    return [ex.response if ex.prompt is None else f"user\n{ex.prompt}\nassistant\n{ex.response}\n"
            for ex in (next(stream) for _ in range(n))]


def write_eval_data(out_dir: str | Path, seed: int = SEED) -> dict[str, Path]:
    """Write <domain>.jsonl for every domain and facts.json (the MC fact base) atomically."""
    from harness.util.atomic import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for domain in DOMAINS:
        lines = "".join(json.dumps(item, sort_keys=True) + "\n" for item in eval_items(domain, seed=seed))
        path = out / f"{domain}.jsonl"
        atomic_write(path, lambda tmp, text=lines: Path(tmp).write_text(text))
        written[domain] = path
    facts = json.dumps(FactBase.generate(seed).facts, indent=1, sort_keys=True) + "\n"
    atomic_write(out / "facts.json", lambda tmp: Path(tmp).write_text(facts))
    written["facts"] = out / "facts.json"
    return written


def read_eval_items(path: str | Path) -> list[dict[str, Any]]:
    """Read one domain's JSONL evaluation file."""
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


CALIBRATION_SAMPLE_SEED = SEED + 2  # another sample of the training distribution, never the evaluation items


def write_calibration_data(out_dir: str | Path, per_domain: int = 32, seed: int = SEED) -> dict[str, Path]:
    """The demo sweep's calibration set: `per_domain` examples of every domain.

    Chat examples go to calibration_chat.jsonl (prompt/response, chat-templated by the
    calibration loader), raw MC text to calibration_text.jsonl (text).
    """
    from harness.util.atomic import atomic_write

    counts = dict.fromkeys(DOMAINS, 0)
    chat: list[str] = []
    text: list[str] = []
    for example in training_stream(seed, sample_seed=CALIBRATION_SAMPLE_SEED):
        if counts[example.domain] >= per_domain:
            if all(c >= per_domain for c in counts.values()):
                break
            continue
        counts[example.domain] += 1
        if example.prompt is None:
            text.append(json.dumps({"domain": example.domain, "text": example.response}) + "\n")
        else:
            chat.append(json.dumps({"domain": example.domain, "prompt": example.prompt,
                                    "response": example.response}) + "\n")
    out = Path(out_dir)
    written = {}
    for name, lines in (("calibration_chat.jsonl", chat), ("calibration_text.jsonl", text)):
        body = "".join(lines)
        atomic_write(out / name, lambda tmp, body=body: Path(tmp).write_text(body))
        written[name] = out / name
    return written
