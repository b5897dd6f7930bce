"""The pieces of `llava batch --ray` that need no cluster: the decoding stage's errors, the
share of the cluster each stage asks for, and the batch size."""

from __future__ import annotations

import os

import pytest

from llava_cli import ray_batch
from llava_cli.media import FrameSpec
from llava_cli.render import Notices


def row(path: str, location: str, error: str = "") -> dict:
    return {"path": os.fsencode(path), "location": os.fsencode(location), "questions": '["q"]',
            "error": error}


def test_decode_reads_the_frames(clip):
    out = ray_batch._decode(FrameSpec(frames=4), row("clip.mp4", str(clip)))
    assert out["error"] == "" and out["media"].frames.shape[0] == 4 and out["load_s"] > 0
    assert out["path"] == b"clip.mp4" and out["questions"] == '["q"]'


def test_decode_path_missing_on_the_worker_is_the_inputs_error(tmp_path):
    out = ray_batch._decode(FrameSpec(frames=4), row("clips/a.mp4", str(tmp_path / "gone.mp4")))
    assert out["media"] is None
    assert out["error"].startswith("clips/a.mp4: not readable on the Ray worker ")
    assert "shares" in out["error"]


def test_decode_error_names_the_input_as_the_user_did(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(20_000))
    out = ray_batch._decode(FrameSpec(frames=4), row("in/bad.mp4", str(bad)))
    assert out["media"] is None and "in/bad.mp4" in out["error"] and str(tmp_path) not in out["error"]


def test_decode_passes_known_errors_through(clip):
    out = ray_batch._decode(FrameSpec(frames=4), row("x.mp4", str(clip), error="no such file or directory: x.mp4"))
    assert out["error"] == "no such file or directory: x.mp4" and out["media"] is None


class Cluster:
    """What _plan reads of a cluster (ray.cluster_resources, ray.nodes)."""

    def __init__(self, cpus: float, gpus: int = 0, nodes: int = 1) -> None:
        self.resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
        self.count = nodes

    def cluster_resources(self) -> dict:
        return self.resources

    def nodes(self) -> list[dict]:
        return [{"Alive": True}] * self.count + [{"Alive": False}]


def test_plan_cpu_cluster_leaves_a_share_for_decoding():
    plan = ray_batch._plan(Cluster(2), 2, Notices(quiet=True))
    assert plan.actors == 2 and plan.actor == {"num_cpus": 0.67} and plan.threads == 1
    assert ray_batch._plan(Cluster(2), 1, Notices(quiet=True)).threads == 2  # the machine's cores
    assert plan.decode["num_cpus"] < plan.actor["num_cpus"]  # distinct: Ray Data keeps the stages apart
    assert 2 * plan.actor["num_cpus"] + plan.decode["num_cpus"] <= 2
    big = ray_batch._plan(Cluster(128, nodes=4), None, Notices(quiet=True))
    assert big.actors == 4 and big.actor == {"num_cpus": 25.0} and big.threads == 32 and big.decode == {"num_cpus": 1.0}


def test_plan_gpu_cluster_one_gpu_per_actor(capsys):
    plan = ray_batch._plan(Cluster(32, gpus=4), None, Notices())
    assert plan.actors == 4 and plan.actor == {"num_gpus": 1} and plan.decode == {"num_cpus": 1} and not plan.threads
    more = ray_batch._plan(Cluster(32, gpus=2), 3, Notices())
    assert more.actors == 3 and "the cluster has 2 GPUs" in capsys.readouterr().err


@pytest.mark.parametrize("inputs, parallel, actors, expected", [
    (1000, 8, 2, 16),  # twice the slots
    (8, 8, 2, 4),  # few inputs: every actor gets some
    (1, 8, 4, 1),
    (10, 1, 1, 2),
])
def test_batch_size(inputs, parallel, actors, expected):
    assert ray_batch._batch_size(inputs, parallel, actors) == expected


def test_auth_refusal_is_recognised_through_the_cause():
    try:
        try:
            raise RuntimeError("RPC error: InvalidAuthToken: Authentication token is missing")
        except RuntimeError as inner:
            raise ConnectionError("Failed to connect to Ray cluster at h:1") from inner
    except ConnectionError as exc:
        assert ray_batch._auth_refused(exc)
    assert not ray_batch._auth_refused(ConnectionError("Failed to connect"))

