"""`distill-cache verify CACHE`: integrity of a cache, problem by problem, with a non-zero exit on any."""

from __future__ import annotations

import json
import sys

import click

from pipeline.options import parse_storage_options, storage_option


# Shared with `pull` and `merge` (they import it from here).
@click.command("verify")
@click.argument("cache")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object on stdout.")
@click.option("--quick", is_flag=True,
              help="Skip the full read: no checksums, cell or NaN/Inf checks, no recomputed scene moments.")
@click.option("--scenes", help="Comma-separated scene names to check (default: every scene of the manifest).")
@storage_option
def command(cache: str, as_json: bool, quick: bool, scenes: str | None, storage_opts: tuple[str, ...]) -> None:
    """Check CACHE (a path or an http(s):// / s3:// URL) read-only: manifest and schema version, completion markers,
    array layout, offsets, cell indices, per-array sha256 checksums, NaN/Inf in features, per-scene moments
    against the stored features, and global statistics against the merge of the scene moments.

    Each problem is printed with its scene and frame; the exit status is 1 if there is any."""
    from tqdm import tqdm

    from cache_schema.verify import verify_cache
    from pipeline.options import parse_scene_list

    chosen = parse_scene_list(scenes)
    with tqdm(desc="verify", unit="scene", file=sys.stderr, disable=None) as bar:
        report = verify_cache(cache, quick=quick, scenes=list(chosen) if chosen else None,
                              storage_options=parse_storage_options(storage_opts),
                              on_scene=lambda name: (bar.update(1), bar.set_postfix_str(name)))
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        for p in report.problems:
            click.echo(str(p))
        mode = "quick" if quick else "full"
        verdict = "OK" if report.ok else f"{len(report.problems)} problem(s)"
        click.echo(f"{cache}: {verdict} ({mode} check of {report.scenes_checked} scenes, "
                   f"{report.frames_checked} frames)")
    if not report.ok:
        sys.exit(1)
