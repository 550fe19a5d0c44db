"""The course corpus, the byte tokenizer, batching and user text files.

The corpus is generated, not downloaded: seeded, deterministic and made of small *domains*,
each a kind of one-line document. Every token carries the id of the domain it came from, so a
model's loss, accuracy and expert routing can be measured per domain.

| domain     | example document              | what it takes to get right           |
|------------|-------------------------------|--------------------------------------|
| arithmetic | ``37+48=85``                  | an algorithm (carrying)              |
| reverse    | ``r:kfqz|zqfk``               | copying with attention, backwards    |
| brackets   | ``b:([]{<|>})``               | a stack: close what is open          |
| grammar    | ``the red cat sees a dog.``   | English-like syntax (no single answer) |
| recall     | ``k:ab=xy,cd=pq;cd?pq``       | long-range key -> value lookup       |
| facts      | ``vomaru lives in kelt.``     | memorising a fixed table             |

The facts table is fixed (its own seed) and shared by the training and validation splits: a
fact can only be known by storing it in parameters, which is where a model's *total*
parameter count (knowledge) and its *active* parameter count (compute) part ways.

Documents have a prompt and an answer (empty for grammar); the answer tokens are marked, and a
domain's exact-match accuracy is the fraction of documents whose whole answer the model
predicts (teacher-forced argmax, which equals greedy decoding when every token is right).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

DOMAINS = ("arithmetic", "reverse", "brackets", "grammar", "recall", "facts")
FACTS_SEED = 20250101  # the facts table never changes with the corpus seed
FACTS_TABLE_SIZE = 4096
SEP = "\n"  # documents are separated by newlines
EVAL_SEED = 999  # the fixed windows of evaluation batches


# --------------------------------------------------------------------------- tokenizer
class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, nothing unknown, nothing to train."""

    vocab_size = 256

    @staticmethod
    def encode(text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    @staticmethod
    def decode(ids) -> str:
        return bytes(int(i) for i in np.asarray(ids).reshape(-1)).decode("utf-8", errors="replace")


# --------------------------------------------------------------------------- documents
class Document(NamedTuple):
    domain: str
    prompt: str
    answer: str  # empty when the domain has no single right answer

    @property
    def text(self) -> str:
        return self.prompt + self.answer + SEP


_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_CONS, _VOW = "bdfgklmnprstvz", "aeiou"
_OPEN, _CLOSE = "([{<", ")]}>"
_ADJ = ("red", "small", "old", "quiet", "green", "happy", "tall", "cold")
_NOUN = ("cat", "dog", "bird", "child", "farmer", "robot", "teacher", "horse")
_VERB = ("sees", "likes", "follows", "helps", "finds", "watches")
_IVERB = ("sleeps", "runs", "sings", "waits")
_PLACE = ("garden", "river", "market", "house", "forest")


def _name(rng: np.random.Generator, syllables: int) -> str:
    return "".join(_CONS[rng.integers(len(_CONS))] + _VOW[rng.integers(len(_VOW))]
                   for _ in range(syllables))


def facts_table(n_facts: int = FACTS_TABLE_SIZE) -> list[tuple[str, str]]:
    """The fixed table of invented facts: (entity, city) pairs with unique entity names.

    The first ``n_facts`` rows are the same whatever the size asked for.
    """
    if not 1 <= n_facts <= FACTS_TABLE_SIZE:
        raise ValueError(f"n_facts must be in [1, {FACTS_TABLE_SIZE}], got {n_facts}")
    rng = np.random.default_rng(FACTS_SEED)
    cities = sorted({_name(rng, 2) for _ in range(64)})[:32]
    seen, table = set(), []
    while len(table) < FACTS_TABLE_SIZE:
        name = _name(rng, 3)
        if name not in seen:
            seen.add(name)
            table.append((name, cities[rng.integers(len(cities))]))
    return table[:n_facts]


def fact_document(name: str, city: str) -> Document:
    """The facts domain's document for one row of the table: ``"<name> lives in <city>."``."""
    return Document("facts", f"{name} lives in ", city + ".")


def fact_documents(n_facts: int) -> list[Document]:
    """Every fact of the first ``n_facts`` rows of the table, once each, in table order: the
    exact set a model trained with ``CorpusConfig(n_facts=n_facts)`` can have memorised."""
    return [fact_document(name, city) for name, city in facts_table(n_facts)]


CAPACITY_SEED = 20250316  # the default table of the capacity measurement (notebook 04)


def capacity_facts(n_facts: int, n_values: int, seed: int = CAPACITY_SEED
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A facts-only table for measuring knowledge capacity, one token per entity.

    Entity ``i`` (an id of its own, ``0 <= i < n_facts``) has one attribute whose value is
    drawn uniformly and independently from ``n_values`` choices, so the table holds exactly
    ``n_facts * log2(n_values)`` bits and no fact can be inferred from another: each has to
    be stored. Unlike the ``facts`` domain's names and cities, nothing is spelled out in
    bytes -- a model reads the entity from one token and answers with one token.

    Returns ``(entities [n_facts] int32, values [n_facts] int32)``.
    """
    if isinstance(n_facts, bool) or not isinstance(n_facts, (int, np.integer)) or n_facts < 1:
        raise ValueError(f"n_facts must be a positive integer, got {n_facts!r}")
    if isinstance(n_values, bool) or not isinstance(n_values, (int, np.integer)) or n_values < 2:
        raise ValueError(f"n_values must be an integer >= 2, got {n_values!r}")
    rng = np.random.default_rng([seed, 16])
    values = rng.integers(n_values, size=n_facts).astype(np.int32)
    return np.arange(n_facts, dtype=np.int32), values


def _noun_phrase(rng) -> str:
    det = ("the", "a")[rng.integers(2)]
    if rng.random() < 0.5:
        return f"{det} {_ADJ[rng.integers(len(_ADJ))]} {_NOUN[rng.integers(len(_NOUN))]}"
    return f"{det} {_NOUN[rng.integers(len(_NOUN))]}"


def make_document(domain: str, rng: np.random.Generator, *, facts=None,
                  recall_pairs: int = 8) -> Document:
    """One random document of ``domain`` (see the module docstring for the formats)."""
    if domain == "arithmetic":
        a, b = rng.integers(100, size=2)
        return Document(domain, f"{a}+{b}=", str(a + b))
    if domain == "reverse":
        s = "".join(rng.choice(list(_LETTERS), size=rng.integers(3, 9)))
        return Document(domain, f"r:{s}|", s[::-1])
    if domain == "brackets":
        stack, out = [], []
        for _ in range(rng.integers(3, 11)):
            if stack and rng.random() < 0.4:
                out.append(_CLOSE[stack.pop()])
            else:
                j = int(rng.integers(4))
                stack.append(j)
                out.append(_OPEN[j])
        if not stack:
            j = int(rng.integers(4))
            stack.append(j)
            out.append(_OPEN[j])
        return Document(domain, "b:" + "".join(out) + "|", "".join(_CLOSE[j] for j in reversed(stack)))
    if domain == "grammar":
        subj = _noun_phrase(rng)
        if rng.random() < 0.6:
            s = f"{subj} {_VERB[rng.integers(len(_VERB))]} {_noun_phrase(rng)}"
        else:
            s = f"{subj} {_IVERB[rng.integers(len(_IVERB))]} in the {_PLACE[rng.integers(len(_PLACE))]}"
        return Document(domain, s + ".", "")
    if domain == "recall":
        keys = []  # a list, not a set: set order depends on the interpreter's hash seed
        while len(keys) < recall_pairs:
            k = "".join(rng.choice(list(_LETTERS), size=2))
            if k not in keys:
                keys.append(k)
        vals = ["".join(rng.choice(list(_LETTERS), size=2)) for _ in keys]
        q = int(rng.integers(len(keys)))
        body = ",".join(f"{k}={v}" for k, v in zip(keys, vals))
        return Document(domain, f"k:{body};{keys[q]}?", vals[q])
    if domain == "facts":
        facts = facts if facts is not None else facts_table()
        return fact_document(*facts[rng.integers(len(facts))])
    raise ValueError(f"domain must be one of {list(DOMAINS)}, got {domain!r}")


# --------------------------------------------------------------------------- corpus
@dataclass(frozen=True)
class CorpusConfig:
    """How the course corpus is generated.

    Attributes:
        seed: seed of the documents (the facts table has its own, fixed seed).
        n_tokens: approximate size of the training split in tokens (validation: a tenth).
        domains: which domains to include.
        weights: relative frequency of each domain's documents (same order as ``domains``).
        n_facts: rows of the fixed facts table in use (the first n).
        recall_pairs: key=value pairs in a recall document (longer = longer range).
    """

    seed: int = 0
    n_tokens: int = 400_000
    domains: tuple[str, ...] = DOMAINS
    weights: tuple[float, ...] | None = None
    n_facts: int = 1000
    recall_pairs: int = 8

    def __post_init__(self):
        if not self.domains:
            raise ValueError("domains must name at least one domain, got ()")
        for d in self.domains:
            if d not in DOMAINS:
                raise ValueError(f"domains must be drawn from {list(DOMAINS)}, got {d!r}")
        if self.weights is not None and (len(self.weights) != len(self.domains)
                                         or any(w < 0 for w in self.weights) or sum(self.weights) <= 0):
            raise ValueError(f"weights must be {len(self.domains)} non-negative numbers with a positive "
                             f"sum, got {self.weights!r}")
        if self.n_tokens < 1000:
            raise ValueError(f"n_tokens must be >= 1000, got {self.n_tokens}")
        if not 1 <= self.n_facts <= FACTS_TABLE_SIZE:
            raise ValueError(f"n_facts must be in [1, {FACTS_TABLE_SIZE}], got {self.n_facts}")
        if not 1 <= self.recall_pairs <= 64:
            raise ValueError(f"recall_pairs must be in [1, 64], got {self.recall_pairs}")

    def replace(self, **changes) -> "CorpusConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TokenData:
    """A token stream with per-token labels.

    tokens: [n] int32 byte ids; domains: [n] int8 index into ``domain_names``;
    answer: [n] bool, True on the tokens of a document's answer.
    """

    tokens: np.ndarray
    domains: np.ndarray
    answer: np.ndarray
    domain_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.tokens)

    def text(self, start: int = 0, length: int = 200) -> str:
        return ByteTokenizer.decode(self.tokens[start:start + length])


def _rng(seed: int, split: str) -> np.random.Generator:
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    return np.random.default_rng([seed, {"train": 0, "val": 1}[split]])


def _domain_probs(cfg: CorpusConfig) -> np.ndarray:
    w = np.asarray(cfg.weights if cfg.weights is not None else [1.0] * len(cfg.domains), float)
    return w / w.sum()


def generate_documents(cfg: CorpusConfig, n_docs: int, split: str = "val",
                       domain: str | None = None) -> list[Document]:
    """``n_docs`` documents of one split (of one domain, or mixed by ``cfg.weights``)."""
    rng = np.random.default_rng([cfg.seed, 0 if split == "train" else 1, 7])
    facts, p = facts_table(cfg.n_facts), _domain_probs(cfg)
    docs = []
    for _ in range(n_docs):
        d = domain if domain is not None else cfg.domains[rng.choice(len(cfg.domains), p=p)]
        docs.append(make_document(d, rng, facts=facts, recall_pairs=cfg.recall_pairs))
    return docs


def build_split(cfg: CorpusConfig, split: str) -> TokenData:
    """Concatenate random documents until the split holds its share of ``cfg.n_tokens``."""
    rng = _rng(cfg.seed, split)
    target = cfg.n_tokens if split == "train" else max(cfg.n_tokens // 10, 1000)
    facts, p = facts_table(cfg.n_facts), _domain_probs(cfg)
    toks, doms, ans, n = [], [], [], 0
    while n < target:
        di = int(rng.choice(len(cfg.domains), p=p))
        doc = make_document(cfg.domains[di], rng, facts=facts, recall_pairs=cfg.recall_pairs)
        t = ByteTokenizer.encode(doc.text)
        a = np.zeros(len(t), bool)
        a[len(doc.prompt):len(doc.prompt) + len(doc.answer)] = True
        toks.append(t)
        doms.append(np.full(len(t), DOMAINS.index(doc.domain), np.int8))
        ans.append(a)
        n += len(t)
    return TokenData(np.concatenate(toks), np.concatenate(doms), np.concatenate(ans), DOMAINS)


def course_corpus(cfg: CorpusConfig | None = None) -> tuple[TokenData, TokenData]:
    """The (train, validation) splits of the course corpus for ``cfg``."""
    cfg = cfg or CorpusConfig()
    return build_split(cfg, "train"), build_split(cfg, "val")


# --------------------------------------------------------------------------- user text
def load_text_file(path, val_fraction: float = 0.1) -> tuple[TokenData, TokenData]:
    """A user's own UTF-8 text file as (train, validation) byte streams, one domain "text".

    Raises a ``ValueError`` (or ``FileNotFoundError``) naming the file when it is missing, is
    not a file, is empty, is not valid UTF-8, or is too short to split.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"text file {str(p)!r} does not exist")
    if not p.is_file():
        raise ValueError(f"text file {str(p)!r} is not a regular file")
    raw = p.read_bytes()
    if not raw.strip():
        raise ValueError(f"text file {str(p)!r} is empty; it needs some UTF-8 text to train on")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"text file {str(p)!r} is not valid UTF-8 (byte {e.start}: "
                         f"{raw[e.start:e.start + 1]!r}); re-save it as UTF-8") from None
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    ids = np.frombuffer(raw, np.uint8).astype(np.int32)
    n_val = int(len(ids) * val_fraction)
    if len(ids) - n_val < 64 or n_val < 16:
        raise ValueError(f"text file {str(p)!r} holds {len(ids)} bytes; at least 100 are needed "
                         f"for a training and a validation split")

    def wrap(t):
        return TokenData(t, np.zeros(len(t), np.int8), np.zeros(len(t), bool), ("text",))

    return wrap(ids[:-n_val]), wrap(ids[-n_val:])


# --------------------------------------------------------------------------- batching
class Batch(NamedTuple):
    """inputs, targets: [batch, seq] int32; domains, answer: labels of the targets."""

    inputs: np.ndarray
    targets: np.ndarray
    domains: np.ndarray
    answer: np.ndarray


def get_batch(data: TokenData, batch_size: int, seq_len: int, seed: int, step: int) -> Batch:
    """Random windows of ``seq_len + 1`` tokens, a pure function of (seed, step).

    Because batch ``step`` never depends on earlier batches, a run resumed from a checkpoint
    sees exactly the batches an uninterrupted run would have.
    """
    if len(data) < seq_len + 1:
        raise ValueError(f"seq_len={seq_len} needs at least {seq_len + 1} tokens; data has {len(data)}")
    rng = np.random.default_rng([seed, step])
    # a window starts anywhere from 0 to len - (seq_len + 1), the last window included
    starts = rng.integers(0, len(data) - seq_len, size=batch_size)
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]  # [batch, seq+1]
    t = data.tokens[idx]
    return Batch(t[:, :-1], t[:, 1:], data.domains[idx[:, 1:]], data.answer[idx[:, 1:]])


def eval_batches(data: TokenData, batch_size: int, seq_len: int, n_batches: int) -> list[Batch]:
    """A fixed list of validation batches (same windows every call)."""
    return [get_batch(data, batch_size, seq_len, seed=EVAL_SEED, step=i) for i in range(n_batches)]


def answer_batch(docs: list[Document], pad: int = ord(SEP)) -> Batch:
    """Documents laid out one per row, each preceded by a newline, padded with newlines.

    ``answer`` marks the target positions holding each document's answer.
    """
    seqs, marks = [], []
    for d in docs:
        t = ByteTokenizer.encode(SEP + d.text)
        a = np.zeros(len(t), bool)
        a[1 + len(d.prompt):1 + len(d.prompt) + len(d.answer)] = True
        seqs.append(t)
        marks.append(a)
    L = max(len(s) for s in seqs)
    t = np.full((len(docs), L), pad, np.int32)
    a = np.zeros((len(docs), L), bool)
    for i, (s, m) in enumerate(zip(seqs, marks)):
        t[i, :len(s)], a[i, :len(m)] = s, m
    doms = np.array([[DOMAINS.index(d.domain)] * (L - 1) for d in docs], np.int8)
    return Batch(t[:, :-1], t[:, 1:], doms, a[:, 1:])


# --------------------------------------------------------------------------- recall by content
FACT_TOKEN_BASE = 128  # fact tokens use the byte ids no ASCII text does
RECALL_QUERY = "?"


class ContentRecallBatch(NamedTuple):
    """A batch of the recall-by-content task (``content_recall_batch``).

    inputs: [batch, seq_len] int32 token ids; target: [batch] the answer token, to be predicted
    at the last position; distance: [batch] how many positions before the last one the asked
    fact sits (1 = the token just before the '?').
    """

    inputs: np.ndarray
    target: np.ndarray
    distance: np.ndarray


def fact_token(key: int, value: int, n_values: int = 10) -> int:
    """The single token id of the fact "key ``key`` has value ``value``"."""
    return FACT_TOKEN_BASE + key * n_values + value


def content_recall_batch(seed: int, step: int, batch_size: int, seq_len: int, *,
                         n_facts: int = 3, n_keys: int = 8, n_values: int = 10,
                         min_distance: int = 2, max_distance: int | None = None,
                         filler: str = "abcdefghijklmnopqrstuvwxyz") -> ContentRecallBatch:
    """Associative recall where the fact must be found by its content, at a random distance.

    Each row is filler (random characters of ``filler``) with ``n_facts`` fact tokens at random
    positions, each fact one token meaning "key K has value v" (``fact_token``; keys distinct
    within a row), then ``?`` and a key letter (``A``.. for keys 0..). The model must predict,
    at the last position, the digit ``v`` of the fact whose key was asked. The asked fact lies
    ``distance`` positions before the last one, drawn uniformly from [min_distance,
    max_distance] (default: as far as the row allows), the others elsewhere: no fixed offset
    says where the answer is, only the matching key does. A pure function of (seed, step),
    like ``get_batch``. Answer digits are ``'0'..``; chance is 1 / n_values.
    """
    if not 1 <= n_keys <= 26 or not 1 <= n_values <= 10 or n_keys * n_values > 256 - FACT_TOKEN_BASE:
        raise ValueError(f"n_keys must be in [1, 26] and n_values in [1, 10] with n_keys * n_values "
                         f"<= {256 - FACT_TOKEN_BASE}, got n_keys={n_keys}, n_values={n_values}")
    if not 1 <= n_facts <= n_keys:
        raise ValueError(f"n_facts must be in [1, n_keys={n_keys}], got {n_facts}")
    last = seq_len - 1  # the key letter; the '?' is at last - 1, the facts before it
    max_distance = last if max_distance is None else max_distance
    if not 2 <= min_distance <= max_distance <= last or seq_len - 2 < n_facts:
        raise ValueError(f"need 2 <= min_distance <= max_distance <= seq_len - 1 = {last} and "
                         f"room for n_facts={n_facts}, got min_distance={min_distance}, "
                         f"max_distance={max_distance}, seq_len={seq_len}")
    rng = np.random.default_rng([seed, step, 7])
    if not filler or not all(32 <= ord(c) < 127 and c not in "?0123456789" for c in filler):
        raise ValueError(f"filler must be printable ASCII characters other than '?' and digits, "
                         f"got {filler!r}")
    chars = np.frombuffer(filler.encode("ascii"), np.uint8).astype(np.int32)
    inputs = chars[rng.integers(0, len(chars), size=(batch_size, seq_len))]
    inputs[:, last - 1] = ord(RECALL_QUERY)
    distance = rng.integers(min_distance, max_distance + 1, size=batch_size)
    keys = rng.random((batch_size, n_keys)).argsort(axis=1)[:, :n_facts]  # distinct per row
    values = rng.integers(0, n_values, size=(batch_size, n_facts))
    asked = last - distance  # the first fact is the one asked for
    r = rng.random((batch_size, last - 1))
    r[np.arange(batch_size), asked] = 2.0  # never chosen for the other facts
    where = np.concatenate([asked[:, None], r.argsort(axis=1)[:, :n_facts - 1]], axis=1)
    rows = np.arange(batch_size)[:, None]
    inputs[rows, where] = fact_token(keys, values, n_values)
    inputs[:, last] = ord("A") + keys[:, 0]
    target = (ord("0") + values[:, 0]).astype(np.int32)
    return ContentRecallBatch(inputs, target, distance.astype(np.int32))


def content_recall_text(tokens, n_values: int = 10) -> str:
    """A row of ``content_recall_batch`` as text, each fact token shown as ``[K=v]``."""
    out = []
    for t in np.asarray(tokens).tolist():
        if t >= FACT_TOKEN_BASE:
            k, v = divmod(t - FACT_TOKEN_BASE, n_values)
            out.append(f"[{chr(ord('A') + k)}={v}]")
        else:
            out.append(chr(t))
    return "".join(out)
