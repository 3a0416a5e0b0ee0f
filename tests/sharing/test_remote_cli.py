"""inspect, train and evaluate run directly on a cache served over HTTP, and never write to it."""

from __future__ import annotations

import json

from click.testing import CliRunner
from loopback_servers import StaticHTTPServer

from pipeline.cli import main


def test_inspect_train_evaluate_over_http(make_cache, tmp_path, one_thread):
    path = make_cache(scenes=2, frames=4, h=96, w=128, channels=8)
    with StaticHTTPServer(path) as srv:
        r = CliRunner().invoke(main, ["inspect", srv.url, "--json"])
        assert r.exit_code == 0, r.output
        s = json.loads(r.output)
        local = json.loads(CliRunner().invoke(main, ["inspect", str(path), "--json"]).output)
        assert s["scenes_complete"] == 2 and s["frames"] == 8 and s["fingerprint"] == local["fingerprint"]
        # this server lists directories, so stored sizes are known; a server that does not gives None
        assert s["bytes_per_frame"] in (None, local["bytes_per_frame"])
        run = tmp_path / "run"
        r = CliRunner().invoke(main, ["train", "--cache", srv.url, "--out", str(run), "--mode", "paired",
                                      "--config", "stages/train/configs/tiny.yaml", "--iters", "2", "--batch-size",
                                      "2", "--workers", "0", "--quiet"])
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(run / "last.pt"), "--cache", srv.url, "--json"])
        assert r.exit_code == 0, r.output
        assert 0.0 <= json.loads(r.output[r.output.index("{"):])["pixel_accuracy"] <= 1.0
        assert srv.requests and srv.writes() == []
