"""A new user's mistakes: each ends in one line naming the problem and its fix, exit code 2, no
traceback, no half-written output and the input folder untouched (issue "no traceback for any user
mistake": data safety, writability, corrupt folders, the load guard, early checks, modes, help pages).

A read-only folder and a full disk are simulated (an OSError from os.mkdir / the writer), so the
tests run unprivileged; the same paths were checked on a read-only tmpfs and a full 200 KiB one."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import compress_fixtures as F


@pytest.fixture
def run(run, monkeypatch):
    """conftest's `run`, with help pages laid out the same whatever the terminal."""
    monkeypatch.setenv("COLUMNS", "160")
    return run


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    return F.save_llava_dir(tmp_path_factory.mktemp("dense") / "tiny-llava")


@pytest.fixture(scope="module")
def compressed_dir(dense_dir, tmp_path_factory):
    from llava_fa.pipeline import compress_checkpoint
    from llava_fa.recipe import Recipe

    recipe = Recipe(method="rtn", options={"group_size": 32})
    recipe.calibration.nsamples = 0
    out = tmp_path_factory.mktemp("compressed") / "q"
    compress_checkpoint(dense_dir, recipe, out)
    return out


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a command loads a model or builds the testbed: its checks must come first."""
    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded (or the testbed built) before the inputs were checked")

    monkeypatch.setattr("llava_fa.io.checkpoint.load_model", loaded)
    monkeypatch.setattr("llava_fa.commands.testbed.ensure_testbed", loaded)


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    """A folder nothing can be created in: permission bits for a user, a simulated read-only mount for root."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        yield ro
        ro.chmod(0o755)
        return
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if Path(path).absolute().is_relative_to(ro):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    yield ro


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its mode and content hash: equal snapshots mean untouched."""
    return {str(p.relative_to(folder)): (p.stat().st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)


def assert_user_error(code: int, err: str, *needles: str) -> None:
    """Exit code 2, exactly one `error:` line, no traceback, the line holds every needle (and a fix)."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert all(n in lines[0] for n in needles), (needles, lines[0])


def _copy_with(dense_dir: Path, dest: Path, name: str, content: str | None) -> Path:
    """A copy of `dense_dir` with file `name` replaced by `content`, or removed (None)."""
    folder = shutil.copytree(dense_dir, dest)
    if content is None:
        (folder / name).unlink()
    else:
        (folder / name).write_text(content)
    return folder


# --- 1. data safety ------------------------------------------------------------------------------

def test_overwrite_never_touches_the_input_or_a_users_folder(run, dense_dir, tmp_path, no_loading):
    before = snapshot(dense_dir)
    cases = [
        ((dense_dir, "--out", dense_dir, "--overwrite"), "is the input model folder"),
        ((dense_dir, "--out", dense_dir / "q"), "lies inside the input model folder"),
        ((dense_dir, "--out", dense_dir.parent, "--overwrite"), "contains the input model folder"),
        ((dense_dir, "--out", tmp_path / "q", "--report", dense_dir / "config.json"), "--report"),
        ((dense_dir, "--out", tmp_path / "q", "--work-dir", dense_dir / "work"), "--work-dir"),
    ]
    for args, message in cases:
        code, _, err = run("compress", *args, "--nsamples", "0", "--quiet")
        assert_user_error(code, err, message, "Fix:")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own work")
    code, _, err = run("compress", dense_dir, "--out", mine, "--overwrite", "--nsamples", "0", "--quiet")
    assert_user_error(code, err, "was not written by llava-fa", "Fix:")
    assert (mine / "notes.txt").read_text() == "my own work"
    assert snapshot(dense_dir) == before and not temporaries(tmp_path)


def test_overwrite_replaces_an_earlier_output(run, dense_dir, tmp_path):
    out = tmp_path / "q"
    for extra in ((), ("--overwrite",)):
        code, _, err = run("compress", dense_dir, "--out", out, "--nsamples", "0", "--quiet", *extra)
        assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


def test_bench_and_demo_outputs(run, dense_dir, tmp_path, no_loading):
    runs = tmp_path / "runs.yaml"
    runs.write_text("- {name: r1, method: rtn, options: {group_size: 32}, nsamples: 0}\n")
    out = tmp_path / "records"
    code, _, err = run("bench", runs, "--model", dense_dir, "--out", dense_dir / "records")
    assert_user_error(code, err, "lies inside the input model folder")
    (out / "models" / "r1").mkdir(parents=True)
    (out / "models" / "r1" / "notes.txt").write_text("mine")
    code, _, err = run("bench", runs, "--model", dense_dir, "--out", out)
    assert_user_error(code, err, "run 'r1'", "was not written by llava-fa")
    (out / "r1.json").write_text("not a record")
    code, _, err = run("bench", runs, "--model", dense_dir, "--out", out)
    assert_user_error(code, err, "is not the bench record of run 'r1'", "Fix:")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code, _, err = run("demo", "--out", mine)
    assert_user_error(code, err, "was not written by llava-fa")
    assert (mine / "notes.txt").read_text() == "mine" and (out / "models" / "r1" / "notes.txt").exists()


# --- 2. read-only places and a full disk ---------------------------------------------------------

def test_read_only_out_fails_before_any_work(run, dense_dir, read_only_dir, no_loading):
    for args in (("compress", dense_dir, "--out", read_only_dir / "sub" / "q", "--nsamples", "0"),
                 ("compress", dense_dir, "--out", read_only_dir / "q", "--nsamples", "0"),
                 ("eval", dense_dir, "--json", read_only_dir / "r.json", "--ppl-windows", "0"),
                 ("demo", "--out", read_only_dir / "demo")):
        code, _, err = run(*args)
        assert_user_error(code, err, "cannot be written", "not writable", "Fix:")
    assert list(read_only_dir.iterdir()) == []


def test_full_disk_removes_the_partial_output(run, dense_dir, tmp_path, monkeypatch):
    def disk_full(directory, *known):
        (Path(directory) / "half.bin").write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("llava_fa.io.checkpoint.write_manifest", disk_full)
    code, _, err = run("compress", dense_dir, "--out", tmp_path / "q", "--nsamples", "0", "--quiet")
    assert_user_error(code, err, "disk is full", "partial output was removed", "Fix:")
    assert not (tmp_path / "q").exists() and not temporaries(tmp_path)


def test_full_disk_in_an_atomic_file_write(tmp_path, monkeypatch):
    from llava_fa.errors import OutputError
    from llava_fa.io.files import write_json_atomic

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OutputError, match="disk is full.*partial file was removed"):
        write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


# --- 3. corrupt config, tokenizer and processor files --------------------------------------------

CORRUPT = [
    ("config.json", '{"model_type": "llava", ', "config.json is not valid JSON"),
    ("config.json", "[1, 2]", "config.json holds a JSON list"),
    ("config.json", json.dumps({"model_type": "nosuch"}), "config.json is rejected by transformers"),
    ("tokenizer.json", '{"bad', "tokenizer.json is not valid JSON"),
    ("processor_config.json", "{", "processor_config.json is not valid JSON"),
    ("tokenizer.json", None, "cannot load the tokenizer or processor"),  # the processor files stay
]


@pytest.mark.parametrize("name,content,message", CORRUPT)
def test_corrupt_model_folder(run, dense_dir, tmp_path, name, content, message):
    folder = _copy_with(dense_dir, tmp_path / "broken", name, content)
    if content is None:
        (folder / "tokenizer_config.json").unlink()
    before = snapshot(folder)
    for args in (("compress", folder, "--out", tmp_path / "q", "--calib", "builtin", "--nsamples", "1",
                  "--seqlen", "8", "--quiet"),
                 ("eval", folder, "--ppl-windows", "0", "--limit", "1"),
                 ("chat", folder, "hi")):
        code, _, err = run(*args)
        assert_user_error(code, err, message, "Fix:")
    assert snapshot(folder) == before and not (tmp_path / "q").exists()


def test_config_with_a_wrong_field_type(run, dense_dir, tmp_path):
    config = json.loads((dense_dir / "config.json").read_text())
    config["text_config"]["hidden_size"] = "wide"
    folder = _copy_with(dense_dir, tmp_path / "broken", "config.json", json.dumps(config))
    code, _, err = run("chat", folder, "hi")
    assert_user_error(code, err, "config.json is rejected by transformers", "hidden_size", "Fix:")


# --- 4. loading without `import llava_fa` fails, with it works -----------------------------------

def test_plain_transformers_refuses_a_compressed_checkpoint(compressed_dir):
    from llava_fa.io.checkpoint import read_config
    from llava_fa.io.hf import LOAD_GUARD_KEY

    plain = ("from transformers import LlavaForConditionalGeneration\n"
             f"LlavaForConditionalGeneration.from_pretrained({str(compressed_dir)!r})\n")
    done = subprocess.run([sys.executable, "-c", plain], capture_output=True, text=True)
    assert done.returncode != 0 and "import llava_fa" in done.stderr and "random weights" in done.stderr
    with_import = "import llava_fa\n" + plain + "print('loaded')\n"
    done = subprocess.run([sys.executable, "-c", with_import], capture_output=True, text=True)
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr
    assert LOAD_GUARD_KEY in json.loads((compressed_dir / "config.json").read_text())
    assert LOAD_GUARD_KEY not in read_config(compressed_dir)  # copies of the config never carry it


def test_weights_missing_from_a_folder_are_an_error(dense_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from llava_fa.errors import CheckpointError
    from llava_fa.io.checkpoint import load_model

    folder = shutil.copytree(dense_dir, tmp_path / "partial")
    tensors = load_file(str(folder / "model.safetensors"))
    dropped = next(k for k in tensors if "layers.1.mlp.up_proj" in k)
    del tensors[dropped]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="lacks 1 weight.*would be random"):
        load_model(folder)


# --- 5. every option checked before anything loads -----------------------------------------------

def test_options_are_checked_before_loading(run, dense_dir, compressed_dir, tmp_path, no_loading):
    runs = tmp_path / "runs.yaml"
    runs.write_text("- {name: r1, method: nosuch, nsamples: 0}\n")
    cases = [
        (("chat", compressed_dir, "hi", "--forward-mode", "bogus"), "unknown forward mode 'bogus'"),
        (("chat", compressed_dir, "hi", "--forward-mode", "spectral"), "'spectral' is not available for"),
        (("eval", compressed_dir, "--forward-mode", "spectral"), "'spectral' is not available for"),
        (("eval", dense_dir, "--forward-mode", "dequant"), "has no compressed layers"),
        (("eval", dense_dir, "--vqa-mode", "slow"), "--vqa-mode 'slow'"),
        (("eval", dense_dir, "--text", tmp_path / "absent.txt"), "not found"),
        (("compress", dense_dir, "--out", tmp_path / "q", "-t", "re:(unclosed"), "bad regular expression"),
        (("compress", dense_dir, "--out", tmp_path / "q", "-i", "re:[z-a]"), "bad regular expression"),
        (("demo", "--method", "nosuch"), "unknown method 'nosuch'"),
        (("demo", "-m", "gptq", "-O", "bits=99"), "from 1 to 8"),
        (("bench", runs, "--model", dense_dir, "--out", tmp_path / "b"), "unknown method 'nosuch'"),
    ]
    for args, message in cases:
        code, _, err = run(*args)
        assert_user_error(code, err, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.yaml"]


# --- 6. output modes follow the umask ------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_users_modes(run, dense_dir, tmp_path, umask):
    old = os.umask(umask)
    try:
        code, _, err = run("compress", dense_dir, "--out", tmp_path / "q", "--nsamples", "0", "--quiet",
                           "--report", tmp_path / "report.json")
    finally:
        os.umask(old)
    assert code == 0, err
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "q", *(tmp_path / "q").iterdir()]}
    assert modes.pop("q") == 0o777 & ~umask
    assert set(modes.values()) == {0o666 & ~umask}, modes
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o666 & ~umask


# --- 7. help pages -------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["compress", "eval", "chat", "bench", "demo"])
def test_help_pages_read_cleanly(run, command):
    code, out, _ = run(command, "--help")
    assert code == 0 and "Usage" in out
    assert "<bool>" not in out and not re.search(r" \.(\s|$)", out), out
    assert "[default:" in out
    if command == "compress":
        assert "fa-gptq" in out and "--help-method" in out and "rtn" in out


# --- 8. the walk through every case --------------------------------------------------------------

def test_walk_through_every_user_mistake(run, dense_dir, compressed_dir, tmp_path, read_only_dir, no_loading):
    """One pass over the cases above as a new user meets them, with the invariants checked after each."""
    guarded = snapshot(dense_dir), snapshot(compressed_dir)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    bad_json = _copy_with(dense_dir, tmp_path / "bad-json", "config.json", "{")
    bad_tok = _copy_with(dense_dir, tmp_path / "bad-tok", "tokenizer.json", "{")
    q = tmp_path / "q"
    walk = [
        (("compress", dense_dir, "--out", dense_dir, "--overwrite"), "is the input model folder"),
        (("compress", dense_dir, "--out", dense_dir / "sub"), "lies inside the input model folder"),
        (("compress", dense_dir, "--out", mine, "--overwrite"), "was not written by llava-fa"),
        (("demo", "--out", mine), "was not written by llava-fa"),
        (("compress", dense_dir, "--out", read_only_dir / "a" / "q"), "not writable"),
        (("compress", bad_json, "--out", q), "config.json is not valid JSON"),
        (("eval", bad_json), "config.json is not valid JSON"),
        (("chat", bad_tok, "hi"), "tokenizer.json is not valid JSON"),
        (("chat", compressed_dir, "hi", "--forward-mode", "spectral"), "'spectral' is not available"),
        (("eval", dense_dir, "--vqa-mode", "slow"), "--vqa-mode 'slow'"),
        (("compress", dense_dir, "--out", q, "-t", "re:("), "bad regular expression"),
        (("demo", "--method", "nosuch"), "unknown method"),
    ]
    for args, message in walk:
        code, _, err = run(*args, *(("--nsamples", "0", "--quiet") if args[0] == "compress" else ()))
        assert_user_error(code, err, message)
        assert not q.exists() and not temporaries(tmp_path), args
        assert (snapshot(dense_dir), snapshot(compressed_dir)) == guarded, args
        assert (mine / "notes.txt").read_text() == "mine"


def test_an_os_error_of_the_users_situation_is_one_line(run, tmp_path, monkeypatch):
    """Whatever command meets a permission or full-disk error it did not foresee: one line, no traceback."""
    def denied(out, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(out))

    monkeypatch.setattr("llava_fa.testbed.build.build_testbed", denied)
    code, _, err = run("testbed", "build", "--out", tmp_path / "tb")
    assert_user_error(code, err, "Permission denied", "Fix:")
