"""`distill-cache pull SRC DST`: copy a cache, or some of its scenes, verified and resumable."""

from __future__ import annotations

import sys

import click

from pipeline.options import parse_storage_options, storage_option


def run_transfer(fn, *args, **kwargs):
    """Run a transfer with a byte progress bar on stderr; cache errors become clean CLI errors."""
    from tqdm import tqdm

    from cache_schema import CacheError

    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, disable=None, desc="copy") as bar:
        try:
            return fn(*args, on_bytes=bar.update, on_scene=lambda name, action: bar.set_postfix_str(
                f"{name} {action}"), **kwargs)
        except CacheError as e:
            raise click.ClickException(str(e)) from e


def echo_report(report) -> None:
    click.echo(f"{report.dst}: {len(report.copied)} scene(s) copied ({report.bytes_copied / 2**20:.1f} MiB in "
               f"{report.seconds:.1f} s), {len(report.skipped)} already complete and verified; "
               f"fingerprint {report.fingerprint[:12]}")
    if report.recopied:
        click.echo(f"copied again (failed verification in the destination): {', '.join(report.recopied)}")
    if report.unavailable:
        click.echo(f"not complete in the source, not copied ({len(report.unavailable)}): "
                   f"{', '.join(report.unavailable[:20])}; rerun when the source is finished", err=True)
        sys.exit(1)


@click.command("pull")
@click.argument("src")
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("--scenes", help="Comma-separated scene names to copy (default: all). The copy's manifest then lists "
                               "only these scenes, so it has its own fingerprint and statistics.")
@click.option("--no-verify-existing", is_flag=True,
              help="Skip re-verifying scenes already complete in DST (they are still compared by checksums).")
@storage_option
def command(src: str, dst: str, scenes: str | None, no_verify_existing: bool, storage_opts: tuple[str, ...]) -> None:
    """Copy the cache SRC (a path or an http(s):// / s3:// URL) into the local directory DST.

    Stored objects are copied byte for byte, each scene is verified against its recorded checksums before its
    completion marker is written, and global statistics are recomputed from the copied scenes' moments. An
    interrupted pull resumes when rerun: complete scenes that verify are skipped, unfinished ones copied again.
    Exit status 1 if some scenes were not complete in SRC."""
    from cache_schema.transfer import pull_cache
    from pipeline.options import parse_scene_list

    chosen = parse_scene_list(scenes)
    report = run_transfer(pull_cache, src, dst, scenes=list(chosen) if chosen else None,
                          storage_options=parse_storage_options(storage_opts),
                          verify_existing=not no_verify_existing)
    echo_report(report)
