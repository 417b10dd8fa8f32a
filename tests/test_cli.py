"""End-to-end CLI tests: the commands a user types, on a small slice of real data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fromzero.cli import main
from fromzero.data.sources import iter_texts

TINY = [
    "model.n_layer=1", "model.n_head=2", "model.d_model=32", "model.max_seq_len=32",
    "tokenizer.vocab_size=600", "train.batch_size=4", "train.max_steps=12", "train.eval_every=6",
    "train.eval_batches=2", "train.warmup_steps=2", "train.log_every=2", "train.precision=fp32",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The first 1500 People's Daily sentences as a user text file."""
    path = tmp_path_factory.mktemp("corpus") / "news.txt"
    texts = []
    for text in iter_texts("people_daily"):
        texts.append(text)
        if len(texts) == 1500:
            break
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained_run(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    code = main(["pretrain", f"data.sources=[{corpus}]", f"data.cache_dir={out / 'cache'}",
                 f"train.out_dir={out}", *TINY])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    """A tiny random encoder folder laid out like `fromzero pretrain` exports one (weights + tokenizer +
    embedding.json), with mean pooling recorded, so --pooling cls visibly overrides it."""
    from fromzero.model.encoder import EncoderConfig, EncoderModel, save_encoder
    from fromzero.tokenizer import TokenizerConfig, train_tokenizer

    out = tmp_path_factory.mktemp("encoder")
    texts = [t for t, _ in zip(iter_texts("reviews_zh"), range(300))]
    tok = train_tokenizer(texts, TokenizerConfig(kind="wordpiece", vocab_size=600), show_progress=False)
    torch.manual_seed(0)
    model = EncoderModel(EncoderConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=32, max_seq_len=32,
                                       dropout=0.0))
    save_encoder(model, out)
    tok.save(out)
    (out / "embedding.json").write_text(json.dumps({"pooling": "mean"}) + "\n", encoding="utf-8")
    return out


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fromzero", *args], capture_output=True, text=True,
                          input=stdin, timeout=300)


def test_pretrain_writes_artifacts_and_loss_falls(trained_run):
    ckpt = trained_run / "checkpoints" / "last"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "trainer_state.json"):
        assert (ckpt / name).is_file(), name
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["steps"] == 12
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    evals = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(evals) >= 2 and evals[-1] < evals[0]
    assert list(trained_run.glob("*.png")), "loss curve PNG missing"


def test_same_seed_same_run(trained_run, corpus, tmp_path):
    """train.seed fixes the initial weights too (they were once drawn before the trainer seeded), so a
    rerun reproduces the same model: the README's numbers come from a command, not from luck."""
    from safetensors.torch import load_file

    weights = []
    for i, name in enumerate(("a", "b")):
        torch.manual_seed(100 + i)  # as two fresh processes would: the global RNG in different states
        assert main(["pretrain", f"data.sources=[{corpus}]", f"data.cache_dir={trained_run / 'cache'}",
                     f"tokenizer_path={trained_run / 'tokenizer.json'}", f"train.out_dir={tmp_path / name}",
                     *TINY, "train.max_steps=2"]) == 0
        weights.append(load_file(tmp_path / name / "checkpoints" / "last" / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_resume_continues_to_new_max_steps(trained_run, corpus):
    code = main(["pretrain", "--resume", f"data.sources=[{corpus}]", f"data.cache_dir={trained_run / 'cache'}",
                 f"train.out_dir={trained_run}", *TINY[:-6], "train.max_steps=14", *TINY[-5:]])
    assert code == 0
    state = json.loads((trained_run / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["step"] == 14


@pytest.mark.parametrize("dtype", ["auto", "float32", "bfloat16"])
def test_generate_streams_text(trained_run, dtype):
    ckpt = trained_run / "checkpoints" / "last"
    r = run_cli("generate", "--model", str(ckpt), "--prompt", "中国", "--max-new-tokens", "8",
                "--temperature", "0", "--dtype", dtype)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("中国") and len(r.stdout.strip()) > 2


def test_generate_too_long_prompt_is_one_clear_line(trained_run):
    ckpt = trained_run / "checkpoints" / "last"
    r = run_cli("generate", "--model", str(ckpt), "--prompt", "中国人民" * 40, "--max-new-tokens", "4")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "max_seq_len" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_tokenizer_train_and_show(corpus, tmp_path):
    out = tmp_path / "tok" / "tokenizer.json"
    assert main(["tokenizer", "train", "--kind", "wordpiece", "--vocab-size", "800", "--sources", str(corpus),
                 "--out", str(out)]) == 0
    r = run_cli("tokenizer", "show", str(out), "--text", "人民日报")
    assert r.returncode == 0 and "人" in r.stdout and "Ã" not in r.stdout


@pytest.mark.parametrize("args, expected", [
    (["pretrain", "train.max_stpes=3"], "Did you mean 'max_steps'"),
    (["pretrain", "--config", "no/such.yaml"], "not found"),
    (["pretrain", "model.n_layer=many"], "expects an integer"),
    (["pretrain", "data.sources=[/no/such/file.txt]"], "/no/such/file.txt"),
    (["generate", "--model", "/no/such/dir", "--prompt", "x"], "/no/such/dir"),
    (["tokenizer", "show", "/no/such/tokenizer.json"], "/no/such/tokenizer.json"),
    (["embed", "--model", "/no/such/encoder", "今天天气很好"], "/no/such/encoder"),
])
def test_user_errors_are_one_line_without_traceback(args, expected, tmp_path):
    r = run_cli(*args, f"train.out_dir={tmp_path}") if args[0] == "pretrain" else run_cli(*args)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert expected in r.stderr
    assert r.stderr.startswith("error: ")


def test_resume_without_checkpoint_is_an_error(tmp_path):
    r = run_cli("pretrain", "--resume", f"train.out_dir={tmp_path}")
    assert r.returncode == 2 and "no checkpoint" in r.stderr


def test_empty_corpus_is_an_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n\n  \n", encoding="utf-8")
    r = run_cli("pretrain", f"data.sources=[{empty}]", f"train.out_dir={tmp_path / 'run'}")
    assert r.returncode == 2 and "empty" in r.stderr.lower()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_convert_round_trip_through_transformers(trained_run, tmp_path):
    import torch
    import transformers

    from fromzero.model import load_model

    src = trained_run / "checkpoints" / "last"
    assert main(["convert", str(src), str(tmp_path / "hf")]) == 0
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    x = torch.randint(0, 500, (2, 16))
    ours = load_model(src).eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    back = load_model(tmp_path / "back").eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x)[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(back(x)[0], ours(x)[0])
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    r = run_cli("convert", str(src), str(tmp_path / "hf"))
    assert r.returncode == 2 and "not empty" in r.stderr


def test_embed_positional_texts_stdin_and_pooling(encoder_dir, capsys, monkeypatch):
    import io

    import numpy as np

    texts = ["今天天气很好", "我喜欢这本书"]

    def embed(*args: str) -> list[dict]:
        assert main(["embed", "--model", str(encoder_dir), *args]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    rows = embed(*texts)  # as configs/pretrain/simcse-zh.yaml documents it
    assert [r["text"] for r in rows] == texts
    vecs = np.array([r["embedding"] for r in rows])
    assert vecs.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vecs[0], vecs[1])

    same = embed(texts[0], "--text", texts[0])  # positional and --text together; identical texts, identical vectors
    assert [r["text"] for r in same] == [texts[0]] * 2 and same[0]["embedding"] == same[1]["embedding"]
    np.testing.assert_allclose(same[0]["embedding"], vecs[0], atol=1e-5)

    monkeypatch.setattr("sys.stdin", io.StringIO(f"{texts[0]}\n\n{texts[1]}\n"))  # blank lines are skipped
    assert embed() == rows

    assert embed(*texts, "--pooling", "mean") == rows  # mean is the recorded pooling
    cls = np.array([r["embedding"] for r in embed(*texts, "--pooling", "cls")])
    np.testing.assert_allclose(np.linalg.norm(cls, axis=1), 1.0, atol=1e-5)
    assert np.abs(cls - vecs).max() > 1e-2


def test_embed_without_text_is_one_clear_line(encoder_dir):
    r = run_cli("embed", "--model", str(encoder_dir), stdin="\n  \n")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: no text to embed") and len(r.stderr.strip().splitlines()) == 1


def test_version_and_recipes_list_every_recipe_task_and_corpus():
    from fromzero import __version__
    from fromzero.corpora import CORPORA
    from fromzero.recipes import available
    from fromzero.tasks import TASKS

    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"fromzero {__version__}"
    r = run_cli("recipes")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for name in [*available(), *TASKS, *CORPORA]:
        assert any(line.split()[:1] == [name] for line in lines), name
    gpt = next(line for line in lines if line.split()[:1] == ["pretrain/gpt-tiny-zh"])
    assert "GPT-2-style decoder pretrained with causal LM" in gpt  # the YAML's first header comment line
    assert "review sentiment" in next(line for line in lines if line.split()[:1] == ["reviews_zh"])


def test_commands_come_from_one_table():
    from fromzero.cli import COMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    assert list(sub.choices) == list(COMMANDS)


@pytest.mark.parametrize("command, target", [("pretrain", "fromzero.recipes.pretrain.run_recipe"),
                                             ("finetune", "fromzero.recipes.finetune.run_finetune")])
def test_overwrite_flag_is_the_train_overwrite_override(command, target, monkeypatch):
    """--overwrite only appends train.overwrite=true: the run itself decides what starting over means."""
    import fromzero.config

    seen = {}
    monkeypatch.setattr(target, lambda recipe, resume=False: seen.setdefault("recipe", recipe) and {})
    monkeypatch.setattr(fromzero.config, "build", lambda cls, data: data)  # the override list, unvalidated
    assert main([command, "--overwrite", "train.max_steps=3"]) == 0
    assert seen["recipe"]["train"]["overwrite"] is True and seen["recipe"]["train"]["max_steps"] == 3
    seen.clear()
    assert main([command, "train.max_steps=3"]) == 0
    assert "overwrite" not in seen["recipe"]["train"]
