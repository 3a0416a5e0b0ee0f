"""`distill-cache backends`: which sparse-convolution backends this machine can run, and which `auto` picks."""

from __future__ import annotations

import json

import click


@click.command("backends")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of a table.")
@click.option("--device", default="cpu", show_default=True,
              help="The teacher's device: on cuda, builds without CUDA kernels are not picked by auto.")
def command(as_json: bool, device: str) -> None:
    """List the teacher's sparse-convolution backends (torch, minkowski, spconv) with their versions.

    `--backend auto` picks the first available of spconv > minkowski > torch (fastest first on CPU) that runs
    on the device.
    """
    from stages.extract.teacher.backends import AUTO_ORDER, available_backends, resolve_backend

    av = available_backends()
    auto = resolve_backend("auto", device)
    if as_json:
        click.echo(json.dumps({"backends": av, "auto": auto, "auto_order": list(AUTO_ORDER), "device": device},
                              indent=2))
        return
    for name, what in av.items():
        ok = not what.startswith("unavailable")
        mark = "*" if name == auto else " "
        click.echo(f"{mark} {name:<10} {'available ' + what if ok else what}")
    click.echo(f"auto -> {auto} on {device} (order: {' > '.join(AUTO_ORDER)})")
