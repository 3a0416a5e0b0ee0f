"""Caches read, verified and pulled from real servers on 127.0.0.1: a static HTTP server and moto's S3 server."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from loopback_servers import S3Server, StaticHTTPServer, fake_aws_env

from cache_schema import open_cache
from cache_schema.remote import ENV_VAR, ChunkCacheStore
from cache_schema.transfer import pull_cache
from cache_schema.verify import verify_cache
from pipeline.cli import main


def assert_same_frames(a, b) -> None:
    assert a.complete_scenes() == b.complete_scenes()
    for s in a.complete_scenes():
        x, y = a.scene(s), b.scene(s)
        bx, by = x.read_block(0, x.num_frames), y.read_block(0, y.num_frames)
        for k in ("frame_id", "pose", "intrinsics", "image_data", "labels", "cells", "features", "point_index",
                  "point_labels", "depth"):
            np.testing.assert_array_equal(getattr(bx, k), getattr(by, k), err_msg=f"{s} {k}")
    np.testing.assert_array_equal(a.global_stats()[0], b.global_stats()[0])


@pytest.fixture
def served(make_cache):
    path = make_cache(scenes=2, frames=6)
    with StaticHTTPServer(path) as srv:
        yield path, srv


def test_http_reads_equal_local_and_never_write(served):
    path, srv = served
    remote = open_cache(srv.url)
    assert remote.fingerprint == open_cache(path).fingerprint
    assert_same_frames(remote, open_cache(path))
    assert verify_cache(srv.url).ok
    assert srv.requests and srv.writes() == []
    # Plain HTTP has no listing: the reader must only ask for objects it can name.
    assert all(not p.endswith("/") for _, p in srv.requests)


def test_http_verify_finds_damage(served):
    path, srv = served
    chunk = path / "scenes" / "scene0001_00" / "features" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-5])
    report = verify_cache(srv.url)
    assert {(p.scene, p.kind, p.frame) for p in report.problems} == {("scene0001_00", "unreadable", 0)}
    result = CliRunner().invoke(main, ["verify", srv.url, "--quick"])
    assert result.exit_code == 0, result.output  # quick does not read chunks


def test_http_missing_scene_is_named(served):
    import shutil

    path, srv = served
    shutil.rmtree(path / "scenes" / "scene0000_00")
    report = verify_cache(srv.url, quick=True)
    assert ("scene0000_00", "missing_scene") in {(p.scene, p.kind) for p in report.problems}


def test_pull_over_http_and_resume(served, tmp_path):
    path, srv = served

    class Killed(RuntimeError):
        pass

    def kill(name: str, action: str) -> None:
        raise Killed(name)

    with pytest.raises(Killed):
        pull_cache(srv.url, tmp_path / "dst", on_scene=kill)
    result = CliRunner().invoke(main, ["pull", srv.url, str(tmp_path / "dst")])
    assert result.exit_code == 0, result.output
    assert "1 scene(s) copied" in result.output and "1 already complete" in result.output
    assert_same_frames(open_cache(tmp_path / "dst"), open_cache(path))
    assert verify_cache(tmp_path / "dst").ok
    assert srv.writes() == []


def test_read_through_chunk_cache(served, tmp_path, monkeypatch):
    path, srv = served
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "chunks"))
    first = open_cache(srv.url)
    assert isinstance(first.root.store, ChunkCacheStore)
    assert_same_frames(first, open_cache(path))
    fetched = [p for _, p in srv.requests if "/c/" in p]
    assert fetched and first.root.store.misses == len(fetched)
    n = len(srv.requests)
    second = open_cache(srv.url)
    assert_same_frames(second, open_cache(path))
    again = [p for _, p in srv.requests[n:] if "/c/" in p]
    assert again == [] and second.root.store.hits == len(fetched)  # chunks from disk, metadata from the server
    assert any(p.endswith("zarr.json") for _, p in srv.requests[n:])
    fp = first.fingerprint
    assert (tmp_path / "chunks" / fp / "scenes" / "scene0000_00" / "features" / "c" / "0" / "0").is_file()


@pytest.fixture(scope="module")
def s3():
    with pytest.MonkeyPatch.context() as mp:
        for k, v in fake_aws_env().items():
            mp.setenv(k, v)
        with S3Server() as server:
            yield server


def test_s3_reads_equal_local(s3, make_cache, monkeypatch):
    for k, v in fake_aws_env().items():
        monkeypatch.setenv(k, v)
    path = make_cache(scenes=2, frames=4)
    url = s3.upload(path, "lab-caches", "scannet/v1")
    remote = open_cache(url, storage_options={"endpoint_url": s3.endpoint_url})
    assert_same_frames(remote, open_cache(path))
    assert verify_cache(url, storage_options={"endpoint_url": s3.endpoint_url}).ok


def test_s3_pull_and_verify_with_env_endpoint(s3, make_cache, tmp_path, monkeypatch):
    for k, v in fake_aws_env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
    path = make_cache(scenes=3, frames=3)
    url = s3.upload(path, "lab-caches", "pull-src")
    runner = CliRunner()
    r = runner.invoke(main, ["pull", url, str(tmp_path / "dst"), "--scenes", "scene0001_00"])
    assert r.exit_code == 0, r.output
    assert open_cache(tmp_path / "dst").manifest.dataset.scenes == ["scene0001_00"]
    r = runner.invoke(main, ["verify", url, "--json"])
    assert r.exit_code == 0, r.output
    # Damage one object in the bucket: verify over S3 names it.
    fs = s3.filesystem()
    key = "lab-caches/pull-src/scenes/scene0002_00/image_data/c/0"
    data = bytearray(fs.cat_file(key))
    data[700] ^= 0xFF
    fs.pipe_file(key, bytes(data))
    r = runner.invoke(main, ["verify", url, "-S", f"endpoint_url={s3.endpoint_url}"])
    assert r.exit_code == 1 and "scene scene0002_00: [checksum] array image_data" in r.output
