"""`distill-cache inspect CACHE`: what a cache holds, one frame's content, a coverage picture."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.options import parse_storage_options, storage_option


@click.command("inspect")
@click.argument("cache")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("--scene", help="Scene name (for --dump / --render); default the first complete scene.")
@click.option("--frame", type=int, default=0, show_default=True, help="Frame index within the scene.")
@click.option("--dump", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the frame's content to an .npz (image, labels, cells, features, ...).")
@click.option("--render", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG of the frame with its covered cells coloured by a PCA of the features.")
@storage_option
def command(cache: str, as_json: bool, scene: str | None, frame: int, dump: Path | None, render: Path | None,
            storage_opts: tuple[str, ...]) -> None:
    """Summarize CACHE (a path or an http(s):// / s3:// URL): scenes, frames, coverage, bytes per frame, statistics,
    teacher and projection parameters, fingerprint. Opening a cache to inspect never writes to it."""
    import numpy as np

    from cache_schema import CacheError, open_cache
    from pipeline.inspect_cache import dump_frame, format_summary, render_coverage, summarize

    try:
        reader = open_cache(cache, storage_options=parse_storage_options(storage_opts))
        if dump or render:
            scenes = reader.complete_scenes()
            if not scenes:
                raise click.ClickException(f"{cache}: no complete scene")
            name = scene or scenes[0]
            if dump:
                np.savez_compressed(dump, **dump_frame(reader, name, frame))
                click.echo(f"wrote {dump} ({name} frame {frame})")
            if render:
                import cv2

                img = render_coverage(reader, name, frame)
                cv2.imwrite(str(render), img[:, :, ::-1])
                click.echo(f"wrote {render} ({name} frame {frame})")
            return
        s = summarize(reader)
    except (CacheError, IndexError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(json.dumps(s, indent=2) if as_json else format_summary(s))
