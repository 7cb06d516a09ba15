"""Generating into a loom tree (basecli/loom/weave.py) with the tiny Llama and with a fake server; the
pipeline modes of `basecli loom` as a user runs them. References: a child woven as row i of a batch is
what `backend.stream` gives that one prompt alone with seed S + i (the resample guarantee); with a server,
the children come from one request with `n`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import invoke  # noqa: E402  (the CLI in this process: torch is imported once)
from fake_openai import FakeServer, choice, reply, sse  # noqa: E402

from basecli.config import SamplingParams  # noqa: E402
from basecli.loom import actions, store, weave  # noqa: E402
from basecli.loom.tree import Tree  # noqa: E402


def alone(backend, prompt: str, seed: int, max_tokens: int):
    p = SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=seed)
    events = list(backend.stream([prompt], [p], alternatives=weave.ALTERNATIVES))
    return "".join(e.text for e in events), [e for e in events if e.finish_reason != "eos"]


@pytest.fixture
def llama(tiny_backends):
    backend = tiny_backends["llama"]
    from basecli.engine.prefix_cache import PrefixCache

    backend.prefix_cache = PrefixCache()
    yield backend
    backend.prefix_cache = None


def test_weave_makes_n_children_each_the_row_alone(llama, one_thread):
    tree = Tree("The quick brown", settings={"seed": 40, "max_tokens": 6, "n": 3})
    kids = weave.weave(llama, tree, tree.root)
    assert [k.parent for k in kids] == [0, 0, 0] and tree.children[0] == [k.id for k in kids]
    for i, kid in enumerate(kids):
        text, events = alone(llama, "The quick brown", 40 + i, 6)
        assert kid.text == text
        assert [t.id for t in kid.tokens] == [e.token_id for e in events]
        assert [t.logprob for t in kid.tokens] == pytest.approx([e.logprob for e in events], abs=1e-4)
        assert [[a[0] for a in t.top] for t in kid.tokens] == [[i for i, _ in e.alternatives] for e in events]
        assert kid.settings["seed"] == 40 + i and kid.model == llama.name and kid.origin == "generated"
    # weaving again at the same node with a fixed seed gives new children (the seed moves on by the 3 there)
    more = weave.weave(llama, tree, tree.root, n=1)
    assert more[0].settings["seed"] == 43


def test_weave_deep_then_branch_at_a_token_continues_from_exactly_there(llama, one_thread):
    tree = Tree("Here's my", settings={"seed": 1, "max_tokens": 5, "n": 2})
    node = tree.root
    for _ in range(3):
        node = weave.weave(llama, tree, node)[0].id
    assert tree.depth(node) == 3
    branch = actions.branch_at_token(tree, node, 2, alternative=1)
    alt = tree[node].tokens[2].top[1]
    assert branch.text == "".join(t.text for t in tree[node].tokens[:2]) + alt[1]
    kid = weave.weave(llama, tree, branch.id, n=1)[0]
    text, _ = alone(llama, tree.text(branch.id), 1, 5)
    assert kid.text == text  # the model was given the branch's path: prefix plus the alternative


def test_continue_extends_a_leaf_then_adds_a_child(llama, one_thread):
    tree = Tree("Hello", settings={"seed": 3, "max_tokens": 4})
    leaf = weave.weave(llama, tree, tree.root, n=1)[0]
    before = leaf.text
    weave.continue_node(llama, tree, leaf.id)
    assert leaf.text.startswith(before) and len(leaf.text) > len(before) and len(leaf.tokens) >= 5
    child = weave.continue_node(llama, tree, tree.root)
    assert child.parent == tree.root


def test_cancelled_generation_adds_nothing(llama, one_thread):
    tree = Tree("Hello", settings={"max_tokens": 20})
    with pytest.raises(weave.Cancelled):
        weave.weave(llama, tree, tree.root, cancelled=lambda: True)
    assert tree.children[tree.root] == []


def test_children_through_the_servers_n_with_chat_stops(tmp_path):
    """A conversation tree over --base-url: one request, n = 3, the template's stop string sent."""
    from basecli.backends.remote import RemoteBackend
    from basecli.loom import session

    with FakeServer(owned_by="vllm") as s:
        s.on("POST", "/tokenize", reply(body={"tokens": list(range(50))}))
        s.on("POST", "/v1/completions", sse(*[choice(f" Paris{i}.", index=i, finish="stop", stop_reason="\nHuman:") for i in range(3)]))
        backend = RemoteBackend(s.url)
        st = session.open_tree("What is the capital of France?", out=str(tmp_path / "c.json"), template="assistant",
                               settings={"n": 3, "max_tokens": 30})
        kids = weave.weave(backend, st.tree, st.tree.root)
    body = s.bodies()[0]
    assert body["n"] == 3 and "\nHuman:" in body["stop"]
    assert body["prompt"].endswith("Human: What is the capital of France?\nAssistant:")
    assert [k.text for k in kids] == [" Paris0.", " Paris1.", " Paris2."]
    assert all(k.finish == "stop" for k in kids)


# --- the command, as a user runs it ----------------------------------------------------------------


def test_expand_breadth_first_jsonl_then_print_and_path(tiny_dirs, tmp_path):
    out = tmp_path / "t.json"
    r = invoke("loom", "The quick brown", "--expand", "2", "--depth", "2", "--jsonl", "--out", str(out),
                "-m", str(tiny_dirs["llama"]), "-n", "4", "-s", "5", "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    # breadth-first: both children of the root first, then two for each of them
    assert [(x["id"], x["parent"], x["depth"]) for x in records] == [(1, 0, 1), (2, 0, 1), (3, 1, 2), (4, 1, 2), (5, 2, 2), (6, 2, 2)]
    saved = store.load(out)
    assert [n.to_dict()["text"] for n in map(saved.__getitem__, range(1, 7))] == [x["text"] for x in records]
    assert str(out) in r.stderr

    printed = invoke("loom", str(out), "--print")
    assert printed.returncode == 0 and printed.stdout.splitlines()[0] == "[0] The quick brown"
    assert printed.stdout.splitlines()[3].startswith("    [4]")  # node 4 under node 1, two levels in
    path = invoke("loom", str(out), "--path", "4")
    assert path.stdout == "The quick brown" + records[0]["text"] + records[3]["text"]
    whole = json.loads(invoke("loom", str(out), "--json").stdout)
    assert whole == json.loads(out.read_text())


@pytest.mark.parametrize("args,message", [
    (["nothing.json", "--print"], "no loom tree at nothing.json"),
    (["a prompt", "--print"], "give a TREE.json"),
    (["a prompt", "--jsonl"], "--jsonl goes with --expand"),
    (["a prompt"], "needs a terminal"),
    (["a prompt", "--expand", "2", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["a prompt", "--depth", "3"], "--depth goes with --expand"),
    (["tree.json", "--out", "other.json", "--print"], "--out names the file of a new tree"),
])
def test_usage_errors_are_one_line(args, message):
    r = invoke("loom", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_path_to_a_missing_node(tmp_path):
    t = tmp_path / "t.json"
    store.save(Tree("x"), t)
    r = invoke("loom", str(t), "--path", "9")
    assert r.returncode == 2 and "there is no node 9" in r.stderr


def test_expand_over_base_url_from_the_command_line(tmp_path):
    """`--base-url`: each weave is one request with n; the children's text and log-probabilities are the server's."""
    out = tmp_path / "r.json"
    with FakeServer(owned_by="vllm") as s:
        s.on("POST", "/tokenize", reply(body={"tokens": [1, 2, 3]}))
        s.on("POST", "/v1/completions", sse(*[choice(f" c{i}", index=i, logprob=-0.25 * (i + 1), finish="length") for i in range(2)]))
        r = invoke("loom", "Once", "--expand", "2", "--depth", "2", "--out", str(out), "--base-url", s.url, "-n", "1", "-s", "9")
        bodies = s.bodies()
    assert r.returncode == 0, r.stderr
    assert len(bodies) == 3 and all(b["n"] == 2 for b in bodies)  # the root, then each of its two children
    assert [b["prompt"] for b in bodies] == ["Once", "Once c0", "Once c1"]
    tree = store.load(out)
    assert [tree[i].text for i in tree.children[0]] == [" c0", " c1"]
    assert [tree[i].tokens[0].logprob for i in tree.children[0]] == [-0.25, -0.5]
    assert r.stdout.splitlines()[0] == "[0] Once"  # without --jsonl, the tree as --print shows it


def test_a_server_without_logprobs_gives_null_not_nan(tmp_path):
    """NaN is not JSON: unknown log-probabilities are written as null, and the file reads back."""
    with FakeServer(owned_by="vllm") as s:
        s.on("POST", "/tokenize", reply(body={"tokens": [1]}))
        s.on("POST", "/v1/completions", sse({"choices": [{"index": 0, "text": " x", "finish_reason": None}]},
                                             {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}))
        from basecli.backends.remote import RemoteBackend

        tree = Tree("a", settings={"n": 1})
        kid = weave.weave(RemoteBackend(s.url), tree, tree.root)[0]
    assert kid.text == " x" and kid.tokens[0].logprob is None and kid.mean_logprob is None
    store.save(tree, tmp_path / "t.json")
    assert "NaN" not in (tmp_path / "t.json").read_text()
    assert store.load(tmp_path / "t.json")[kid.id].tokens[0].logprob is None


@pytest.mark.parametrize("engine,dtype", [("lean", "float32"), ("lean", "bfloat16"), ("transformers", "float32"),
                                          ("transformers", "bfloat16"), ("q4", "float32")])
def test_expand_on_every_engine(tiny_dirs, tmp_path, monkeypatch, engine, dtype):
    """Each path a machine can pick, forced here: the prefix cache rides on every engine and dtype."""
    import shutil

    if engine == "q4" and shutil.which("cc") is None:
        pytest.skip("no C compiler to build native.c")
    monkeypatch.setenv("BASECLI_ENGINE", "transformers" if engine == "transformers" else "lean")
    monkeypatch.setenv("BASECLI_THREADS", "1")
    out = tmp_path / "e.json"
    args = ["loom", "The quick brown", "--expand", "2", "--depth", "3", "--out", str(out), "-m", str(tiny_dirs["llama"]),
            "-n", "4", "-s", "1", "--dtype", dtype] + (["--quantize", "q4"] if engine == "q4" else [])
    r = invoke(*args)
    assert r.returncode == 0, r.stderr
    tree = store.load(out)
    assert len(tree.nodes) == 1 + 2 + 4 + 8 and all(tree[i].tokens for i in tree.nodes if i != tree.root)
