import numpy as np
import pytest

from minimoe.training.data import (DOMAINS, ByteTokenizer, CorpusConfig, TokenData, answer_batch,
                                   build_split, facts_table, generate_documents, get_batch,
                                   load_text_file, make_document)

SMALL = CorpusConfig(n_tokens=20_000)


def test_corpus_is_deterministic_and_seeded():
    a, b = build_split(SMALL, "train"), build_split(SMALL, "train")
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.domains, b.domains)
    c = build_split(SMALL.replace(seed=1), "train")
    assert not np.array_equal(a.tokens[:1000], c.tokens[:1000])
    v = build_split(SMALL, "val")
    assert not np.array_equal(a.tokens[:1000], v.tokens[:1000])


def test_every_token_is_labelled_with_its_documents_domain():
    data = build_split(SMALL, "train")
    text = ByteTokenizer.decode(data.tokens)
    lines = text.split("\n")[:-1]
    pos = 0
    for line in lines[:300]:
        doms = set(data.domains[pos:pos + len(line) + 1].tolist())
        assert len(doms) == 1
        name = DOMAINS[doms.pop()]
        answer = ByteTokenizer.decode(data.tokens[pos:pos + len(line)][data.answer[pos:pos + len(line)]])
        if name == "arithmetic":
            a, b = line.split("=")[0].split("+")
            assert answer == str(int(a) + int(b))
        elif name == "reverse":
            assert answer == line[2:].split("|")[0][::-1]
        elif name == "recall":
            body, query = line[2:].split(";")
            assert answer == dict(kv.split("=") for kv in body.split(","))[query.split("?")[0]]
        elif name == "facts":
            assert answer == dict(facts_table())[line.split(" ")[0]] + "."
        elif name == "grammar":
            assert answer == ""
        pos += len(line) + 1


def test_brackets_answer_closes_what_is_open():
    rng = np.random.default_rng(0)
    pairs = {"(": ")", "[": "]", "{": "}", "<": ">"}
    for _ in range(200):
        d = make_document("brackets", rng)
        stack = []
        for ch in d.prompt[2:-1] + d.answer:
            if ch in pairs:
                stack.append(pairs[ch])
            else:
                assert stack.pop() == ch
        assert stack == [] and d.answer


def test_facts_table_is_fixed_and_unique():
    t = facts_table()
    assert len({name for name, _ in t}) == len(t) == 4096
    assert facts_table(10) == t[:10]
    assert len({city for _, city in t}) <= 32
    with pytest.raises(ValueError, match=r"n_facts must be in \[1, 4096\], got 0"):
        facts_table(0)


def test_get_batch_is_a_pure_function_of_seed_and_step():
    data = build_split(SMALL, "train")
    a = get_batch(data, 4, 16, seed=3, step=7)
    b = get_batch(data, 4, 16, seed=3, step=7)
    c = get_batch(data, 4, 16, seed=3, step=8)
    assert np.array_equal(a.inputs, b.inputs) and not np.array_equal(a.inputs, c.inputs)
    assert np.array_equal(a.inputs[:, 1:], a.targets[:, :-1])  # targets are shifted inputs


def test_answer_batch_marks_answers():
    docs = generate_documents(SMALL, 5, domain="arithmetic")
    b = answer_batch(docs)
    for i, d in enumerate(docs):
        assert ByteTokenizer.decode(b.targets[i][b.answer[i]]) == d.answer


def test_corpus_config_errors():
    with pytest.raises(ValueError, match=r"domains must be drawn from .*got 'poetry'"):
        CorpusConfig(domains=("poetry",))
    with pytest.raises(ValueError, match=r"weights must be 2 non-negative numbers"):
        CorpusConfig(domains=("facts", "grammar"), weights=(1.0,))
    with pytest.raises(ValueError, match=r"domain must be one of"):
        make_document("poetry", np.random.default_rng(0))


def test_user_text_file(tmp_path):
    p = tmp_path / "story.txt"
    p.write_text("Once upon a time, a small model learned to count. " * 20, encoding="utf-8")
    train, val = load_text_file(p)
    assert len(train) + len(val) == len(p.read_bytes())
    assert train.domain_names == ("text",)
    assert ByteTokenizer.decode(train.tokens[:4]) == "Once"


@pytest.mark.parametrize("content, match", [
    (b"", r"is empty"),
    (b"   \n\n", r"is empty"),
    (b"caf\xe9 au lait " * 20, r"is not valid UTF-8 \(byte 3"),
    (b"tiny", r"at least 100 are needed"),
])
def test_bad_text_files_get_clear_errors(tmp_path, content, match):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        load_text_file(p)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        load_text_file(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match=r"is not a regular file"):
        load_text_file(tmp_path)


def test_corpus_does_not_depend_on_the_interpreters_hash_seed():
    import subprocess
    import sys

    code = ("from minimoe.training.data import CorpusConfig, build_split; import hashlib; "
            "print(hashlib.sha256(build_split(CorpusConfig(n_tokens=5000), 'train').tokens.tobytes()).hexdigest())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout for seed in ("1", "2")}
    assert len(outs) == 1


def test_get_batch_reaches_every_window_including_the_last():
    # 6 tokens, windows of 4 (seq_len 3 + 1): starts 0, 1 and 2 are the only ones possible
    tokens = np.arange(6, dtype=np.int32)
    data = TokenData(tokens, np.zeros(6, np.int8), np.zeros(6, bool), ("text",))
    starts = {int(get_batch(data, 8, 3, seed=0, step=i).inputs[j, 0])
              for i in range(20) for j in range(8)}
    assert starts == {0, 1, 2}
    exact = TokenData(tokens[:4], np.zeros(4, np.int8), np.zeros(4, bool), ("text",))
    assert get_batch(exact, 2, 3, seed=0, step=0).targets.tolist() == [[1, 2, 3]] * 2
    with pytest.raises(ValueError, match=r"seq_len=4 needs at least 5 tokens; data has 4"):
        get_batch(exact, 2, 4, seed=0, step=0)


def test_content_recall_batch_answers_by_the_asked_key_at_the_stated_distance():
    from minimoe.training.data import FACT_TOKEN_BASE, content_recall_batch, content_recall_text
    b = content_recall_batch(0, 3, 64, 40, n_facts=3, min_distance=5, max_distance=30)
    assert b.inputs.shape == (64, 40) and b.target.shape == b.distance.shape == (64,)
    for row, target, d in zip(b.inputs, b.target, b.distance):
        assert row[-2] == ord("?")
        facts = {int(i): divmod(int(t) - FACT_TOKEN_BASE, 10) for i, t in enumerate(row)
                 if t >= FACT_TOKEN_BASE}
        assert len(facts) == 3 and len({k for k, _ in facts.values()}) == 3  # distinct keys
        asked = row[-1] - ord("A")
        (pos, (_, value)), = [(i, kv) for i, kv in facts.items() if kv[0] == asked]
        assert len(row) - 1 - pos == d and 5 <= d <= 30
        assert target == ord("0") + value
    assert len(set(b.distance.tolist())) > 10  # the distance varies
    again = content_recall_batch(0, 3, 64, 40, n_facts=3, min_distance=5, max_distance=30)
    assert np.array_equal(again.inputs, b.inputs)  # a pure function of (seed, step)
    assert not np.array_equal(content_recall_batch(0, 4, 64, 40).inputs, b.inputs)
    assert content_recall_text(b.inputs[0]).count("[") == 3
    with pytest.raises(ValueError, match="max_distance"):
        content_recall_batch(0, 0, 2, 10, max_distance=10)
    with pytest.raises(ValueError, match="n_facts"):
        content_recall_batch(0, 0, 2, 10, n_facts=9)
