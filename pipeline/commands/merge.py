"""`distill-cache merge A B ... --out C`: one cache from caches of disjoint scenes made with the same parameters."""

from __future__ import annotations

import click

from pipeline.commands.pull import echo_report, run_transfer
from pipeline.options import parse_storage_options, storage_option


@click.command("merge")
@click.argument("caches", nargs=-1, required=True)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Local directory of the merged cache (created, or resumed if it holds this same merge).")
@click.option("--no-verify-existing", is_flag=True,
              help="Skip re-verifying scenes already complete in --out (they are still compared by checksums).")
@storage_option
def command(caches: tuple[str, ...], out: str, no_verify_existing: bool, storage_opts: tuple[str, ...]) -> None:
    """Merge CACHES (paths or URLs, at least two) into --out.

    The caches must hold disjoint, complete scenes and have equal parameter fingerprints (teacher checkpoint,
    projection, encoding, label space; the sparse-conv backend may differ). Different parameters are refused with
    the differing fields named; overlapping scenes are refused by name. Scenes are copied byte for byte and
    verified; the global statistics are recomputed from the merged scenes' moments. Rerun to resume."""
    from cache_schema.transfer import merge_caches

    if len(caches) < 2:
        raise click.UsageError("merge needs at least two caches")
    report = run_transfer(merge_caches, list(caches), out, storage_options=parse_storage_options(storage_opts),
                          verify_existing=not no_verify_existing)
    echo_report(report)
