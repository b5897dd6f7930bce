"""Model names, Hub downloads, the shared cache, offline use and `llava models`, end to end.

A real HTTP server on 127.0.0.1 (tests/support/fakehub.py) serves a tiny checkpoint under the
Hub's URL scheme; every `llava` run is a subprocess with HF_ENDPOINT pointing at it and
HF_HOME in a temporary folder, so nothing here touches the network or the user's cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
from packaging.version import Version

from support.checkpoints.next_video import make_next_video
from support.fakehub import FakeHub

from llava_cli import hub
from llava_cli.errors import ModelError

LLAVA = [sys.executable, "-m", "llava_cli"]
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
TOKEN = "hf_test_token_with_access"
# huggingface_hub before 1.18 keeps a broken download's partial file (blobs/<etag>.incomplete)
# for the next run to resume; 1.18 and later resume a dropped connection within the run,
# write to a file of the process's own and delete it when they give up.
PARTIAL_FILES_RESUME = Version(huggingface_hub.__version__) < Version("1.18")
# Files in the served repo that inference does not need: they must never be fetched.
UNNEEDED = ("README.md", "pytorch_model.bin", "tokenizer.model", "original/consolidated.safetensors")


# ---------------------------------------------------------------------------------------
# Fixtures: a sharded tiny checkpoint, a fake Hub serving it, an isolated environment


# huggingface_hub writes a download in 10 MiB chunks: only whole chunks survive an
# interruption. The second shard's header metadata is padded past that so a download cut
# in its middle leaves something to resume.
PADDING = 11 * 1024 * 1024


def _shard(folder: Path) -> None:
    """Split model.safetensors into two shards and an index, as large checkpoints come."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    names = sorted(tensors)
    halves = (names[: len(names) // 2], names[len(names) // 2:])
    weight_map = {}
    for shard, keys in zip(SHARDS, halves):
        metadata = {"format": "pt", **({"padding": "-" * PADDING} if shard == SHARDS[1] else {})}
        save_file({k: tensors[k] for k in keys}, folder / shard, metadata=metadata)
        weight_map.update({k: shard for k in keys})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "model.safetensors").unlink()


# A tiny checkpoint make_next_video wrote beforehand, for a venv without transformers: CI
# tests huggingface_hub 1.x/2.x in one, as transformers 4.48.3 (the oracle that writes the
# checkpoint) refuses to import beside a huggingface_hub >= 1.0.
PREBUILT = "LLAVA_TEST_TINY_NEXT_VIDEO"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    if os.environ.get(PREBUILT):
        shutil.copytree(os.environ[PREBUILT], folder)
    else:
        pytest.importorskip("transformers", reason=f"writing the tiny checkpoint needs transformers (or {PREBUILT})")
        make_next_video(folder)
    _shard(folder)
    return folder


@pytest.fixture(scope="module")
def repo_files(tiny) -> dict[str, bytes]:
    files = {str(p.relative_to(tiny)): p.read_bytes() for p in tiny.rglob("*") if p.is_file()}
    files.update({"README.md": b"# tiny\n", "pytorch_model.bin": os.urandom(4096),
                  "original/consolidated.safetensors": os.urandom(2048),
                  # as OneVision repos have it (this family ignores it): a needed file in a folder
                  "video_processor/preprocessor_config.json": files["preprocessor_config.json"] + b"\n"})
    assert "tokenizer.model" in files
    return files


@pytest.fixture
def fake(repo_files):
    server = FakeHub()
    server.add("org/tiny", repo_files)
    server.add("org/gated", repo_files, gated_token=TOKEN)
    server.add("org/pickle", {"config.json": repo_files["config.json"], "pytorch_model.bin": os.urandom(4096),
                              "README.md": b"# old\n"})
    server.add("org/huge", repo_files, declared_sizes={SHARDS[0]: 10 ** 16})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def env(tmp_path, fake) -> dict:  # not conftest's env: only the fake Hub's settings
    config = tmp_path / "config.toml"
    config.write_text("")
    return {"HF_ENDPOINT": fake.url, "HF_HOME": str(tmp_path / "hf"), "LLAVA_CONFIG": str(config)}


def llava(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run llava as a user would, with only the given Hub/llava settings in force."""
    strip = ("LLAVA_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_")
    full = {k: v for k, v in os.environ.items() if not k.startswith(strip) and "PROXY" not in k.upper()}
    full.update({"NO_COLOR": "1", "NO_PROXY": "127.0.0.1,localhost", **env})
    return subprocess.run([*LLAVA, *args], capture_output=True, text=True, timeout=timeout, env=full)


def llava_together(*runs: tuple[tuple[str, ...], dict], timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Several independent runs at once (the suite has two cores to use)."""
    strip = ("LLAVA_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(strip) and "PROXY" not in k.upper()}
    procs = [(args, subprocess.Popen([*LLAVA, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**base, "NO_COLOR": "1", "NO_PROXY": "127.0.0.1,localhost", **env}))
             for args, env in runs]
    results = []
    for args, proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess([*LLAVA, *args], proc.returncode, out, err))
    return results


def error_line(result) -> str:
    """The one error line of a failed run (notices before it are allowed, tracebacks not)."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("llava: error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def one_line_error(result, *needles: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    line = error_line(result)
    assert result.stdout == ""
    for needle in needles:
        assert needle in line, line
    return line


def snapshot_of(env: dict, repo: str = "org/tiny") -> Path:
    storage = Path(env["HF_HOME"]) / "hub" / ("models--" + repo.replace("/", "--"))
    commit = (storage / "refs" / "main").read_text().strip()
    return storage / "snapshots" / commit


def needed_files(files: dict) -> set[str]:
    return {name for name in files if hub.wanted(name)}


ASK = ("ask", "--max-new-tokens", "4", "Describe a llama.")


# ---------------------------------------------------------------------------------------
# Download, cache, offline


def test_download_then_cache_then_offline(fake, env, repo_files):
    first = llava(*ASK, "--model", "org/tiny", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip()
    needed = needed_files(repo_files)
    assert len(needed) == 13 and set(SHARDS) <= needed
    assert f"downloading org/tiny ({len(needed)} files," in first.stderr
    fetched = sorted(r.path.rsplit("/", 1)[-1] for r in fake.file_gets("org/tiny/"))
    assert fetched == sorted(n.rsplit("/", 1)[-1] for n in needed), "each needed file once, nothing else"
    for name in UNNEEDED:
        assert not fake.requests(contains=f"/{name}"), f"{name} is not needed and must not be fetched"
    snapshot = snapshot_of(env)
    assert {str(p.relative_to(snapshot)): p.read_bytes() for p in snapshot.rglob("*") if p.is_file()} == \
        {name: repo_files[name] for name in needed}

    # Cached: the answer again, after one metadata request and no file request at all.
    fake.clear_log()
    second = llava(*ASK, "--model", "org/tiny", env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert second.stderr == ""
    assert [r.path for r in fake.requests()] == ["/api/models/org/tiny/revision/main"]

    listed = llava("models", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["MODEL", "ALIAS", "FAMILY", "SIZE", "REVISION"]
    commit = snapshot.name
    size = sum(len(repo_files[n]) for n in needed)
    assert row.split() == ["org/tiny", "-", "LLaVA-NeXT-Video", *hub.format_bytes(size).split(),
                           commit[:12], "(main)"]

    # The Hub goes away: the cached revision answers, after one notice naming it (the
    # requests a fallback makes are counted in test_cached_model_when_the_hub_fails);
    # --offline and HF_HUB_OFFLINE=1 never try the Hub and say nothing.
    fake.stop()
    unreachable, offline, by_env = llava_together(
        ((*ASK, "--model", "org/tiny"), env), ((*ASK, "--model", "org/tiny", "--offline"), env),
        ((*ASK, "--model", "org/tiny"), {**env, "HF_HUB_OFFLINE": "1"}))
    assert unreachable.returncode == 0, unreachable.stderr
    assert unreachable.stdout == first.stdout
    assert unreachable.stderr.splitlines() == [
        f"llava: warning: cannot reach the Hugging Face Hub at {env['HF_ENDPOINT']} (connection refused); "
        f"using the cached revision {commit[:12]} (main) of org/tiny (--offline skips this check)"]
    for result in (offline, by_env):
        assert result.returncode == 0, result.stderr
        assert result.stdout == first.stdout
        assert result.stderr == ""
    one_line_error(llava(*ASK, "--model", "org/other", "--offline", env=env), "org/other is not cached",
                   "llava models pull org/other")
    one_line_error(llava(*ASK, "--model", "org/other", env=env), "cannot reach", "not cached", "--offline")


def test_cached_model_when_the_hub_fails(fake, env, repo_files):
    """A Hub that times out or fails (5xx) is as good as unreachable: the cached revision
    answers after the one metadata request. A Hub that answers 401/403/404 is not: that
    stays an error (a revoked token, a repo gone private or deleted is news to act on)."""
    for repo in ("org/slow", "org/down", "org/gone"):
        fake.add(repo, repo_files)
    online, *pulls = llava_together(((*ASK, "--model", "org/slow"), env), (("models", "pull", "-q", "org/down"), env),
                                    (("models", "pull", "-q", "org/gone"), env))
    assert [r.returncode for r in (online, *pulls)] == [0, 0, 0], [r.stderr for r in (online, *pulls)]
    assert online.stdout.strip()
    commit = snapshot_of(env, "org/slow").name
    fake.repos["org/slow"].hang = True
    fake.repos["org/down"].fail = (503, "")
    fake.repos["org/gone"].fail = (401, "RepoNotFound")
    fake.clear_log()
    fast = {**env, "HF_HUB_ETAG_TIMEOUT": "1"}
    slow, down, gone = llava_together(((*ASK, "--model", "org/slow"), fast), ((*ASK, "--model", "org/down"), env),
                                      ((*ASK, "--model", "org/gone"), env))
    assert sorted(r.path for r in fake.requests()) == [f"/api/models/org/{name}/revision/main"
                                                       for name in ("down", "gone", "slow")]
    for result, why in ((slow, f"cannot reach the Hugging Face Hub at {fake.url} (timed out)"),
                        (down, f"the Hugging Face Hub at {fake.url} failed (503)")):
        assert result.returncode == 0, result.stderr
        assert result.stdout == online.stdout
        name = "org/slow" if result is slow else "org/down"
        assert result.stderr.splitlines() == [f"llava: warning: {why}; using the cached revision {commit[:12]} (main) "
                                              f"of {name} (--offline skips this check)"]
    one_line_error(gone, "org/gone not found", "(401)", "HF_TOKEN")
    # `models pull` is asked to bring the cache up to date: that it cannot is an error.
    pull = llava("models", "pull", "-q", "org/down", env=env)
    one_line_error(pull, "org/down", "503")
    # No notice with --quiet; pinned to a commit, a cached model never asks the Hub at all.
    fake.clear_log()
    quiet, pinned = llava_together(((*ASK, "--quiet", "--model", "org/down"), env),
                                   ((*ASK, "--model", f"org/down@{commit}"), env))
    assert (quiet.returncode, quiet.stderr, quiet.stdout) == (0, "", online.stdout)
    assert (pinned.returncode, pinned.stderr, pinned.stdout) == (0, "", online.stdout)
    assert [r.path for r in fake.requests()] == ["/api/models/org/down/revision/main"]


def test_checkpoint_fetched_by_transformers_is_reused(fake, env, repo_files):
    """Weights another tool put in the shared cache (hf_hub_download, as transformers
    does) are not downloaded again: only the missing small files are."""
    present = ["config.json", "model.safetensors.index.json", *SHARDS]
    code = ("from huggingface_hub import hf_hub_download\n"
            f"for name in {present!r}:\n"
            "    hf_hub_download('org/tiny', name)\n")
    strip = ("HF_", "HUGGINGFACE_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(strip) and "PROXY" not in k.upper()}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   env={**base, **env, "NO_PROXY": "127.0.0.1"})
    fake.clear_log()
    pulled = llava("models", "pull", "org/tiny", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert Path(pulled.stdout.strip()) == snapshot_of(env)
    fetched = {r.path.split("/", 5)[-1] for r in fake.file_gets()}
    assert fetched == needed_files(repo_files) - set(present)


def test_interrupted_download_resumes(fake, env, repo_files):
    shard = SHARDS[1]
    chunk = 10 * 1024 * 1024  # huggingface_hub 0.x's write granularity
    cut = chunk + 4096
    assert len(repo_files[shard]) > cut
    fake.cut[("org/tiny", shard)] = cut  # every connection for the shard drops there (1.x/2.x retry in the run)
    broken = llava("models", "pull", "org/tiny", env=env)
    line = error_line(broken)
    assert "broke off" in line and "run the same command again" in line
    storage = Path(env["HF_HOME"]) / "hub" / "models--org--tiny"
    partial = list((storage / "blobs").glob("*.incomplete"))
    if PARTIAL_FILES_RESUME:
        assert len(partial) == 1 and chunk <= partial[0].stat().st_size <= cut
        kept = partial[0].stat().st_size
    else:
        assert partial == []  # deleted when the download gave up: nothing is left behind
    # A partial file never stands where the complete one belongs.
    assert not (storage / "snapshots").exists() or not list((storage / "snapshots").glob(f"*/{shard}"))
    listed, offline = llava_together((("models", "list"), env), ((*ASK, "--model", "org/tiny", "--offline"), env))
    assert listed.stdout.splitlines()[1].endswith("(main) incomplete"), listed.stdout
    one_line_error(offline, "only partly downloaded", shard, "llava models pull org/tiny")

    del fake.cut[("org/tiny", shard)]
    fake.clear_log()
    resumed = llava(*ASK, "--model", "org/tiny", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip()
    gets = fake.file_gets(shard)
    # The shard resumes where its partial file ends; otherwise only the shard is fetched again.
    assert [(r.range, r.status) for r in gets] == ([(f"bytes={kept}-", 206)] if PARTIAL_FILES_RESUME else
                                                   [(None, 200)])
    assert [r.path.rsplit("/", 1)[-1] for r in fake.file_gets()] == [shard]
    assert not list((storage / "blobs").glob("*.incomplete"))
    assert (snapshot_of(env) / shard).read_bytes() == repo_files[shard]


def test_ctrl_c_during_a_download_stops_at_once_and_keeps_what_resumes(fake, env, repo_files):
    import signal
    import time

    chunk = 10 * 1024 * 1024
    fake.stall[("org/tiny", SHARDS[1])] = chunk + 4096
    strip = ("LLAVA_", "HF_", "HUGGINGFACE_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(strip) and "PROXY" not in k.upper()}
    proc = subprocess.Popen([*LLAVA, "models", "pull", "org/tiny"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**base, **env, "NO_PROXY": "127.0.0.1"})
    blobs = Path(env["HF_HOME"]) / "hub" / "models--org--tiny" / "blobs"
    deadline = time.monotonic() + 60
    def partial_sizes():  # a small shard's .incomplete file may be renamed between glob and stat
        for partial in blobs.glob("*.incomplete"):
            try:
                yield partial.stat().st_size
            except FileNotFoundError:
                continue

    while not any(size >= chunk for size in partial_sizes()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 5, "Ctrl-C waited for the stalled download"
    assert proc.returncode == 130
    assert out == "" and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("llava: error:")] == [
        next(line for line in err.splitlines() if "interrupted" in line and "run the same command again" in line)]
    shard_blob = blobs / (hashlib.sha256(repo_files[SHARDS[1]]).hexdigest() + ".incomplete")
    if PARTIAL_FILES_RESUME:
        assert chunk <= shard_blob.stat().st_size <= chunk + 4096  # kept for the next run to resume
    else:
        assert not list(blobs.glob("*.incomplete"))  # no run would resume it: not left behind
    assert not (blobs / shard_blob.stem).exists()


def test_corrupt_cached_shard_is_named_and_pull_force_repairs_it(fake, env, repo_files):
    assert llava("models", "pull", "org/tiny", "--quiet", env=env).returncode == 0
    shard = snapshot_of(env) / SHARDS[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 1000])  # through the link: the cached blob is truncated
    asked, shown = llava_together((ASK + ("--model", "org/tiny"), env), (("models", "info", "org/tiny"), env))
    for result in (asked, shown):
        one_line_error(result, SHARDS[0], "truncated", "llava models pull --force org/tiny")

    fake.clear_log()
    repaired = llava("models", "pull", "--force", "org/tiny", env=env)  # verifies what it fetched
    assert repaired.returncode == 0, repaired.stderr
    assert shard.read_bytes() == repo_files[SHARDS[0]]
    assert len(fake.file_gets()) == len(needed_files(repo_files))  # --force fetches every file again


# ---------------------------------------------------------------------------------------
# Refusals and Hub errors: one line each, before any weights are fetched


def test_gated_repo_needs_a_token(fake, env):
    line = one_line_error(llava("models", "pull", "org/gated", env=env), "gated", "(401)", "HF_TOKEN",
                          f"{fake.url}/org/gated")
    assert "licence" in line
    one_line_error(llava("models", "pull", "org/gated", env={**env, "HF_TOKEN": "hf_someone_else"}),
                   "gated", "(403)", "accept its licence")
    assert not [r for r in fake.file_gets() if r.status == 200]
    allowed = llava("models", "pull", "org/gated", env={**env, "HF_TOKEN": TOKEN})
    assert allowed.returncode == 0, allowed.stderr
    assert {r.authorization for r in fake.file_gets() if r.status == 200} == {f"Bearer {TOKEN}"}


def test_not_found(fake, env):
    one_line_error(llava("models", "pull", "org/missing", env=env), "org/missing not found", "(401)", "HF_TOKEN")
    one_line_error(llava("models", "pull", "org/missing", env={**env, "HF_TOKEN": TOKEN}),
                   "org/missing not found", "(404)")
    one_line_error(llava(*ASK, "--model", "org/tiny@v9", env=env), "revision 'v9' not found in org/tiny", "(404)")
    assert not fake.file_gets()


def test_pickle_only_repo_is_refused(fake, env):
    one_line_error(llava(*ASK, "--model", "org/pickle", env=env), "pytorch_model.bin", "pickle", "safetensors")
    assert not fake.file_gets() and not fake.requests("HEAD")


def test_not_enough_disk_space(fake, env):
    one_line_error(llava("models", "pull", "org/huge", env=env), "not enough disk space", "HF_HUB_CACHE",
                   str(Path(env["HF_HOME"]) / "hub"))
    assert not fake.file_gets()


# ---------------------------------------------------------------------------------------
# llava models list / info / rm


def test_models_list_info_rm(fake, env, tiny):
    empty = llava("models", "list", env=env)
    assert empty.returncode == 0 and empty.stdout == ""
    assert "no models in the cache" in empty.stderr
    one_line_error(llava("models", "info", "org/tiny", env=env), "org/tiny is not cached", "llava models pull")

    pulled = llava("models", "pull", "org/tiny", env=env)
    assert pulled.returncode == 0, pulled.stderr
    snapshot = Path(pulled.stdout.strip())
    assert snapshot == snapshot_of(env)

    shown, local = llava_together((("models", "info", "org/tiny"), env), (("models", "info", str(tiny)), env))
    assert shown.returncode == 0, shown.stderr
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in shown.stdout.splitlines())
    from safetensors.torch import load_file

    params = sum(t.numel() for shard in SHARDS for t in load_file(tiny / shard).values())
    assert fields["model"] == "org/tiny"
    assert fields["revision"] == f"{snapshot.name[:12]} (main)"
    assert fields["family"].startswith("LLaVA-NeXT-Video")
    assert fields["parameters"].endswith(f"({params:,})")
    assert fields["dtype"] == "float32"
    assert fields["context length"] == "4096 tokens"
    assert fields["tokens per image"].startswith("1176 for a 336×336 image")
    assert fields["tokens per frame"] == "144"
    assert fields["frames per video"] == "8 by default (any count)"
    assert local.returncode == 0, local.stderr
    assert f"({params:,})" in local.stdout and local.stdout.startswith(f"model             {tiny}\n")

    removed = llava("models", "rm", "org/tiny", env=env)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith("deleted org/tiny (") and "freed" in removed.stdout
    assert not (Path(env["HF_HOME"]) / "hub" / "models--org--tiny").exists()
    assert llava("models", "list", env=env).stdout == ""
    one_line_error(llava("models", "rm", "org/tiny", env=env), "org/tiny is not in the cache")
    one_line_error(llava("models", "rm", str(tiny), env=env), "is a folder")
    assert tiny.is_dir()


def test_progress_bar_on_a_terminal(fake, env):
    import pty
    import select

    master, slave = pty.openpty()
    strip = ("LLAVA_", "HF_", "HUGGINGFACE_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(strip) and "PROXY" not in k.upper()}
    proc = subprocess.Popen([*LLAVA, "models", "pull", "org/tiny"], stdin=slave, stdout=slave, stderr=slave,
                            env={**base, **env, "TERM": "xterm", "NO_COLOR": "1", "COLUMNS": "120"})
    os.close(slave)
    chunks = []
    while select.select([master], [], [], 60)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=60) == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "org/tiny" in screen and "/12.4 MB" in screen and "━" in screen  # rich's bar, with bytes
    assert "downloading org/tiny (" not in screen  # the plain line is for pipes only


# ---------------------------------------------------------------------------------------
# Names: aliases, unknown names, where the default model comes from

DOCUMENTED = {
    "ov-0.5b": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "ov-7b": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
    "ov-72b": "llava-hf/llava-onevision-qwen2-72b-ov-hf", "ov-0.5b-si": "llava-hf/llava-onevision-qwen2-0.5b-si-hf",
    "ov-7b-si": "llava-hf/llava-onevision-qwen2-7b-si-hf", "next-video-7b": "llava-hf/LLaVA-NeXT-Video-7B-hf",
    "next-video-7b-dpo": "llava-hf/LLaVA-NeXT-Video-7B-DPO-hf", "next-video-34b": "llava-hf/LLaVA-NeXT-Video-34B-hf",
    "video-llava-7b": "LanguageBind/Video-LLaVA-7B-hf", "next-mistral-7b": "llava-hf/llava-v1.6-mistral-7b-hf",
    "next-vicuna-7b": "llava-hf/llava-v1.6-vicuna-7b-hf", "next-vicuna-13b": "llava-hf/llava-v1.6-vicuna-13b-hf",
    "next-34b": "llava-hf/llava-v1.6-34b-hf", "next-llama3-8b": "llava-hf/llama3-llava-next-8b-hf",
    "next-72b": "llava-hf/llava-next-72b-hf", "next-110b": "llava-hf/llava-next-110b-hf",
    "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf", "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf",
    "ov-chat": "llava-hf/llava-onevision-qwen2-7b-ov-chat-hf",
    "llava-video-7b": "Isotr0py/LLaVA-Video-7B-Qwen2-hf",
    "interleave-0.5b": "llava-hf/llava-interleave-qwen-0.5b-hf",
    "interleave-7b": "llava-hf/llava-interleave-qwen-7b-hf",
}


def test_aliases_resolve_to_the_documented_repos():
    for alias, repo in DOCUMENTED.items():
        ref = hub.parse_ref(alias)
        assert (ref.repo_id, ref.revision, ref.folder) == (repo, "main", None), alias
    assert hub.DEFAULT_MODEL == DOCUMENTED["ov-0.5b"]
    pinned = hub.parse_ref("next-video-7b@refs/pr/3")
    assert (pinned.repo_id, pinned.revision) == (DOCUMENTED["next-video-7b"], "refs/pr/3")
    assert hub.parse_ref("Org/Model-1.0@v2").repo_id == "Org/Model-1.0"
    assert hub.parse_ref("./some/folder").folder == Path("some/folder")
    assert hub.parse_ref("~/models/x").folder == Path.home() / "models" / "x"


def test_unknown_alias_suggests_close_names(env):
    with pytest.raises(ModelError, match=r"unknown model 'ov-7' \(did you mean ov-7b"):
        hub.parse_ref("ov-7")
    with pytest.raises(ModelError, match="next-video-7b"):
        hub.parse_ref("next-vide-7b")
    one_line_error(llava("ask", "--model", "llava-15-7b", "q", env=env), "unknown model 'llava-15-7b'",
                   "did you mean llava-1.5-7b", "--aliases")
    listed = llava("models", "list", "--aliases", env=env)
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ALIAS", "MODEL", "SIZE", "(BF16)"]
    rows = [line.split() for line in lines[1:]]
    assert {alias: repo for alias, repo, _, _ in rows} == hub.ALIASES
    sizes = {alias: (approx, unit) for alias, _, approx, unit in rows}
    assert sizes["ov-0.5b"] == ("~1.8", "GB") and sizes["ov-7b"] == ("~16", "GB")  # 2 bytes a parameter
    assert sizes["interleave-0.5b"] == ("~1.7", "GB") and sizes["next-110b"] == ("~224", "GB")


def test_default_model_precedence(env, tmp_path):
    """--model, then LLAVA_MODEL, then config.toml's model, then the built-in default."""
    config = Path(env["LLAVA_CONFIG"])
    config.write_text('model = "/nowhere/from-config"\n')
    flag, envvar = "/nowhere/from-flag", "/nowhere/from-env"
    one_line_error(llava("ask", "q", env=env), "/nowhere/from-config")
    one_line_error(llava("ask", "q", env={**env, "LLAVA_MODEL": envvar}), envvar)
    one_line_error(llava("ask", "--model", flag, "q", env={**env, "LLAVA_MODEL": envvar}), flag)
    config.write_text("# nothing set\n")
    one_line_error(llava("ask", "--offline", "q", env=env), f"{hub.DEFAULT_MODEL} is not cached")
    config.write_text("model = [1, 2\n")
    one_line_error(llava("ask", "q", env=env), str(config), "not valid TOML")
