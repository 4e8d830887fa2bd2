"""The ``rsrs`` command line: one Click group; each command lives in the module of its workflow."""

from __future__ import annotations

import logging
import sys

import click

from rsrs.model.errors import RsrsError


class RsrsGroup(click.Group):
    """A Click group that turns :class:`RsrsError` into one clear line and exit code 1 (traceback with -v)."""

    def invoke(self, ctx: click.Context):  # noqa: D102
        try:
            return super().invoke(ctx)
        except RsrsError as err:
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            click.echo(f"Error: {err}", err=True)
            sys.exit(1)


@click.group(cls=RsrsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress details and show tracebacks on errors.")
@click.version_option(package_name="rsrs")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """rsrs: find what a sentence describes in remote-sensing imagery, at scale.

    \b
    Typical use:
      rsrs models                      list model presets
      rsrs run job.yaml                segment a job's queries over GeoTIFF/STAC scenes
      rsrs synth dataset data/         make a synthetic referring dataset
      rsrs train configs/train/x.yaml  fine-tune a model
      rsrs evaluate --model M --data manifest:data/manifest.jsonl
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="rsrs")


# Commands register themselves here, one line each, from their workflow modules.
from rsrs.workflows.catalog import models_command  # noqa: E402

cli.add_command(models_command)
