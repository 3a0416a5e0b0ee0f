"""`distill-cache synth`: write a procedural indoor world in a real dataset's on-disk format."""

from __future__ import annotations

from pathlib import Path

import click

KIND_HELP = "scannet: ScanNet-v2 scans (+ label table, splits); s3dis: S3DIS rooms + 2D-3D-S frames; nyu: NYU-v2 .mat"


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    from stages.extract.synthetic.world import parse_size

    try:
        return parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _layouts(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in items if v not in ("sens", "export", "25k")]
    if bad or not items:
        raise click.BadParameter(f"choose from sens, export, 25k (comma separated), got {value!r}")
    return items


@click.command("synth")
@click.argument("kind", type=click.Choice(["scannet", "s3dis", "nyu"]), metavar="{scannet,s3dis,nyu}")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--scenes", type=click.IntRange(min=1), default=2, show_default=True, help="Number of rooms.")
@click.option("--frames", type=click.IntRange(min=0), default=20, show_default=True,
              help="Frames (camera positions) per room. 0 (scannet): 3D-only scans — meshes and their labels, "
                   "no .sens — every one listed in scannetv2_train.txt: extra rooms for a teacher "
                   "(`train-teacher --extra-root`).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="World seed: the same seed gives byte-identical geometry, poses and images.")
@click.option("--size", callback=_size, default=None, metavar="WxH",
              help="Colour image size (default: the dataset's, e.g. 1296x968 for ScanNet). ScanNet depth is "
                   "rendered at half this size; S3DIS and NYU depth at this size.")
@click.option("--style", type=click.Choice(["a", "b"]), default="a", show_default=True,
              help="Appearance (palettes, texture, lighting). Same seed, other style = same geometry and labels, "
                   "different look: a domain shift.")
@click.option("--layouts", callback=_layouts, default="sens", show_default=True,
              help="ScanNet only: which 2D layouts to write, comma separated: sens (.sens files), export "
                   "(SensReader color/depth/pose folders + label-filt), 25k (scannet_frames_25k).")
@click.option("--vertex-spacing", type=click.FloatRange(0.005, 1.0), default=0.04, show_default=True,
              help="Mesh vertex spacing in metres (ScanNet meshes: 50k-300k vertices per room).")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="ScanNet only: rooms built and written in this many processes (one per core). The world is "
                   "byte-identical whatever the number.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(kind: str, out: Path, scenes: int, frames: int, seed: int, size: tuple[int, int] | None, style: str,
            layouts: tuple[str, ...], vertex_spacing: float, processes: int, quiet: bool) -> None:
    """Generate a synthetic indoor world and write it as KIND's on-disk dataset format under OUT.

    Rooms (bedrooms, living rooms, offices, kitchens, bathrooms) are built from boxes and cylinders with
    ScanNet-20 furniture, walked by a hand-held camera at eye height and ray-cast into colour, z-depth and
    NYU40 label images. Confusable classes (cabinet / refrigerator / door, table / desk / counter, wall /
    picture / curtain) share colour palettes, so only 3D geometry tells them apart.

    \b
    Examples:
      distill-cache synth scannet data/scannet --scenes 4 --frames 30 --size 320x240
      distill-cache synth s3dis data/s3dis --scenes 6 --frames 10 --size 256x256
      distill-cache synth nyu data/nyu --scenes 10 --frames 8 --size 160x120 --style b
      distill-cache synth scannet data/rooms3d --scenes 200 --frames 0 --seed 1000   # a 3D repository
      distill-cache synth scannet data/scannet --scenes 150 --frames 4 --processes 2  # both cores
    """
    from stages.extract.synthetic.world import generate_world

    try:
        summary = generate_world(kind, out, scenes=scenes, frames=frames, seed=seed, size=size, style=style,
                                 layouts=layouts, vertex_spacing=vertex_spacing, progress=not quiet,
                                 processes=processes)
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"wrote {summary.describe()}")
