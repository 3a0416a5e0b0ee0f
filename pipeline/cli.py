"""The `distill-cache` command line: one click group, one module per command under pipeline/commands/."""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

import click

# (command name, module under pipeline.commands). Modules are imported only when their command runs, so
# `distill-cache --help` stays fast and a broken optional dependency only breaks its own command.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("synth", "Generate a synthetic indoor world written in a real dataset's on-disk format."),
    "train-teacher": ("train_teacher", "Train the 3D teacher (Res16UNet34C) on a dataset's 3D labels."),
    "evaluate-teacher": ("evaluate_teacher", "Score a 3D teacher per class against its voxel ceiling, with its "
                         "confusions."),
    "extract": ("extract", "Stage one: run the 3D teacher and project its features into a Zarr cache."),
    "stats": ("stats", "Recompute a cache's global feature statistics from its per-scene moments."),
    "inspect": ("inspect", "Summarize a cache, dump one frame, or render its coverage."),
    "train": ("train", "Stage two: train the 2D student purely from a cache."),
    "evaluate": ("evaluate", "Evaluate a student checkpoint on a cache (ScanNet 2D / S3DIS / NYU metrics)."),
    "predict": ("predict", "Run a trained or exported student on your own images, folders or a ScanNet .sens."),
    "export": ("export", "Export a trained student to ONNX or TorchScript, checked in its runtime."),
    "verify": ("verify", "Check a cache's integrity: markers, versions, checksums, statistics, NaN/Inf."),
    "pull": ("pull", "Copy a cache or a subset of its scenes, verified and resumable."),
    "merge": ("merge", "Combine caches of disjoint scenes made with the same parameters."),
    "backends": ("backends", "List the sparse-convolution backends available on this machine."),
}


def package_version() -> str:
    try:
        return version("distill-cache")
    except PackageNotFoundError:
        return "0+unknown"


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, _ = COMMANDS[name]
        module = importlib.import_module(f"pipeline.commands.{module_name}")
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_version(), prog_name="distill-cache")
def main() -> None:
    """distill-cache: distill a 3D teacher's features into 2D scene-parsing networks through an offline cache.

    Stage one (`extract`) writes a versioned Zarr cache; stage two (`train`, `evaluate`) reads only that cache;
    a trained student then needs only images (`predict`, `export`).
    """


if __name__ == "__main__":
    main()
