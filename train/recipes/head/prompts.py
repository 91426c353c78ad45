"""Training prompts for self-distillation, from three sources that share nothing with any benchmark slice.

- `stdlib`: instructions synthesised from the docstrings of the CPython standard library's functions
  (the stdlib corpus's train split: its held-out files, models/stdlib-pair/heldout_files.txt, are never read).
- `word`: arithmetic word problems from templates written here (names, items and numbers drawn by seed).
- `topic`: writing and explanation tasks over seed topics written here.

A seed topic lands in the held-out chat set (never trained on) when sha256(topic) mod 8 == 0; the
held-out set is those topics under every task template (bench/prompts/chat_heldout.jsonl). The rest
of the prompts are split train / valid (the valid split tunes the learning rate) by sha256(prompt).
"""
from __future__ import annotations

import ast
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from talon_rt.train import corpus

HELDOUT_TOPIC_MOD = 8   # 1 topic in 8 is held out: ~12 topics x 8 templates = ~100 held-out chat prompts
VALID_MOD = 50          # 2 % of the training prompts tune the learning rate
DEFAULT_HELDOUT_OUT = Path("bench/prompts/chat_heldout.jsonl")


@dataclass(frozen=True)
class Prompt:
    id: str         # "<source>:<key>"
    source: str     # stdlib | word | topic
    text: str       # the user message


def _bucket(text: str, mod: int) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") % mod


# --- stdlib docstrings -----------------------------------------------------------------------------

STDLIB_TEMPLATES = (
    "Write a Python function named `{name}` that does the following: {summary}",
    "In Python's `{module}` module, what does `{qual}` do? Its documentation says: \"{summary}\" "
    "Explain it in simple words and give a short example.",
    "Here is the docstring of a Python function:\n\n{doc}\n\nSummarize what the function does and "
    "describe its arguments.",
)


def _summary(doc: str) -> str:
    first = doc.strip().split("\n\n", 1)[0]
    return " ".join(first.split())


STDLIB_PROMPTS = 1800  # of ~3,500 documented functions: keeps code at ~half of the mix, chat the rest


def stdlib_prompts(root: Path | None = None, limit: int | None = STDLIB_PROMPTS) -> list[Prompt]:
    """One prompt per documented public function of the train files (template chosen by hash); `limit`
    keeps those of smallest sha256(key) (a fixed, spread-out subset)."""
    root = root or corpus.stdlib_root()
    rows = []
    for rel in corpus.list_files(root):
        if corpus.is_heldout(rel):
            continue
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        module = rel[:-3].replace("/", ".").removesuffix(".__init__")
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            summary = _summary(doc)
            if not 40 <= len(summary) <= 400 or len(doc) > 1200:
                continue
            key = f"{rel}:{node.name}:{node.lineno}"
            template = STDLIB_TEMPLATES[_bucket(key, len(STDLIB_TEMPLATES))]
            rows.append(Prompt(f"stdlib:{key}", "stdlib", template.format(
                name=node.name, module=module, qual=f"{module}.{node.name}", summary=summary, doc=doc.strip())))
    if limit is not None:
        rows = sorted(sorted(rows, key=lambda p: _bucket(p.id, 2**62))[:limit], key=lambda p: p.id)
    return rows


# --- templated word problems -----------------------------------------------------------------------

NAMES = ("Amara", "Bruno", "Chen", "Dalia", "Emil", "Farah", "Goran", "Hana", "Ines", "Jonas", "Keiko",
         "Luca", "Maya", "Nikos", "Olga", "Pavel", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera")
ITEMS = ("stickers", "marbles", "apples", "pencils", "stamps", "seashells", "cookies", "books", "coins",
         "postcards", "tomatoes", "beads")
WORD_TEMPLATES = (
    "{n1} has {a} {item}. {n1} buys {b} more and then gives {c} to {n2}. How many {item} does {n1} have now?",
    "A box holds {a} {item}. {n1} fills {b} boxes and {n2} fills {c} boxes. How many {item} are there in all?",
    "{n1} reads {a} pages every day. How many pages does {n1} read in {b} weeks?",
    "{n1} earns ${a} per hour and works {b} hours on Monday and {c} hours on Tuesday. How much does "
    "{n1} earn in total?",
    "There are {a} {item} to share equally among {b} children. How many does each child get, and how many "
    "are left over?",
    "{n1} is {a} years old. {n2} is {b} years older than {n1}. How old will {n2} be in {c} years?",
    "A train travels {a} km per hour for {b} hours, then {c} km per hour for 2 hours. How far does it go?",
    "{n1} had ${a}. {n1} spent a quarter of it on lunch and ${b} on a ticket. How much money is left?",
    "A garden has {a} rows of {item} with {b} in each row. {n2} picks {c}. How many are still in the garden?",
    "{n1} saves ${a} a week. How many weeks does {n1} need to save ${b}? Show your reasoning.",
)
WORD_PROMPTS = 700


def word_prompts(count: int = WORD_PROMPTS, seed: int = 0) -> list[Prompt]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        n1, n2 = rng.sample(NAMES, 2)
        template = WORD_TEMPLATES[i % len(WORD_TEMPLATES)]
        a, b, c = rng.randint(12, 240), rng.randint(2, 40), rng.randint(2, 30)
        rows.append(Prompt(f"word:{i}", "word", template.format(n1=n1, n2=n2, item=rng.choice(ITEMS), a=a, b=b, c=c)))
    return rows


# --- seed topics -----------------------------------------------------------------------------------

TOPICS = (
    "volcanoes", "honeybees", "the water cycle", "public libraries", "solar panels", "chess openings",
    "sourdough bread", "the Roman aqueducts", "black holes", "recycling plastic", "learning a second language",
    "coral reefs", "bicycle maintenance", "the printing press", "time zones", "compost", "lighthouses",
    "electric cars", "the human heart", "origami", "jazz music", "desert plants", "the Moon landing",
    "rainbows", "sleep hygiene", "budgeting", "glaciers", "the immune system", "public speaking",
    "bird migration", "the Silk Road", "photosynthesis", "earthquakes", "wind turbines", "tea ceremonies",
    "password security", "octopuses", "the Olympic Games", "museums", "urban gardening", "marathon training",
    "the metric system", "fossils", "typewriters", "camping safety", "recipes with lentils", "the stock market",
    "weather forecasting", "pottery", "cloud computing", "friendship", "penguins", "ancient Egypt",
    "spreadsheets", "yoga", "coffee", "the internet", "mountain climbing", "bees and pollination",
    "renewable energy", "board games", "first aid", "the solar system", "trains", "vaccines", "kites",
    "dinosaurs", "writing a resume", "meditation", "rivers", "the Renaissance", "bridges", "mushrooms",
    "video games", "team sports", "recycling paper", "thunderstorms", "sharks", "maps", "the piano",
    "saving water", "robots", "volunteering", "tides", "cheese making", "the alphabet", "snow",
    "houseplants", "telescopes", "ballet", "electricity", "the Great Wall of China", "letter writing",
    "bread baking", "time management", "wolves",
)
TOPIC_TEMPLATES = (
    "Write a short paragraph about {t}.",
    "Give me three interesting facts about {t}.",
    "Explain {t} to a ten-year-old.",
    "What are the advantages and disadvantages of {t}?",
    "Write a short poem about {t}.",
    "Write a friendly email to a colleague about {t}.",
    "List five questions a student might ask about {t}, with short answers.",
    "Summarize the most important ideas about {t} in a few sentences.",
)


def topic_is_heldout(topic: str) -> bool:
    return _bucket(topic, HELDOUT_TOPIC_MOD) == 0


def topic_prompts(heldout: bool = False) -> list[Prompt]:
    return [Prompt(f"topic:{t}:{k}", "topic", template.format(t=t))
            for t in TOPICS if topic_is_heldout(t) == heldout
            for k, template in enumerate(TOPIC_TEMPLATES)]


# --- splits ----------------------------------------------------------------------------------------

def training_prompts(root: Path | None = None, seed: int = 0) -> tuple[list[Prompt], list[Prompt]]:
    """(train, valid): every source, seeded-shuffled so any prefix mixes the sources."""
    rows = stdlib_prompts(root) + word_prompts(seed=seed) + topic_prompts(heldout=False)
    random.Random(seed).shuffle(rows)
    valid = [p for p in rows if _bucket(p.text, VALID_MOD) == 0]
    train = [p for p in rows if _bucket(p.text, VALID_MOD) != 0]
    return train, valid


def heldout_prompts() -> list[Prompt]:
    return topic_prompts(heldout=True)

