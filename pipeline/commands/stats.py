"""`distill-cache stats CACHE`: recompute the global statistics from the per-scene moments."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("stats")
@click.argument("cache", type=click.Path(exists=True, file_okay=False, path_type=Path))
def command(cache: Path) -> None:
    """Merge the per-scene moments of every complete scene (Chan et al.) into the root's global per-channel
    mean and variance, and write them to the manifest. Extraction does this at its end; run it after a
    distributed extraction was interrupted, or after scenes were added."""
    from cache_schema import CacheError, CacheWriter
    from cache_schema.reader import open_cache

    try:
        reader = open_cache(cache)
        writer = CacheWriter.create(cache, reader.manifest)
        stats = writer.finalize_stats()
    except CacheError as e:
        raise click.ClickException(str(e)) from e
    if stats is None:
        click.echo("no features in this cache (2D-only) or no complete scene: no statistics")
        return
    import numpy as np

    mean, var = np.asarray(stats.mean), np.asarray(stats.var)
    click.echo(f"{stats.count} covered cells in {len(reader.complete_scenes())} complete scenes; "
               f"mean of means {mean.mean():.4f}, mean variance {var.mean():.4f} over {mean.size} channels")
