"""The ``rsrs`` command line: one Click group; each command lives in the module of its workflow."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from rsrs.core.errors import RsrsError
from rsrs.workflows.interrupts import Terminated, sigterm_stops

# name -> (module:attribute of the Click command, one-line help). Modules load only when their command runs,
# so `rsrs --help` stays fast (the model stack alone takes seconds to import).
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("rsrs.workflows.run:run_command", "Segment a job's queries over GeoTIFF/STAC scenes (Zarr + GeoParquet)."),
    "models": ("rsrs.workflows.catalog:models_command", "List model presets with backbones, sizes and parameters."),
    "synth": ("rsrs.workflows.synth:synth_command", "Make seeded synthetic referring data: chips or large scenes."),
    "train": (
        "rsrs.workflows.train:train_command",
        "Fine-tune a model on a referring dataset (LoRA; data-parallel under torchrun).",
    ),
    "evaluate": ("rsrs.workflows.evaluate:evaluate_command", "Score a model on a dataset split: gIoU, cIoU, Pr@X."),
    "export": ("rsrs.workflows.export:export_command", "Export a run's probabilities as Cloud-Optimized GeoTIFFs."),
}


class RsrsGroup(click.Group):
    """The ``rsrs`` group: lazily imported commands, :class:`RsrsError` as one line + exit 1 (trace with -v), Ctrl-C
    and SIGTERM as one line + exit 130 / 143."""

    def list_commands(self, ctx: click.Context) -> list[str]:  # noqa: D102
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:  # noqa: D102
        if name not in self.commands and name in COMMANDS:
            module, attr = COMMANDS[name][0].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return self.commands.get(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:  # noqa: D102
        rows = [
            (name, COMMANDS[name][1] if name in COMMANDS else self.commands[name].get_short_help_str())
            for name in self.list_commands(ctx)
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):  # noqa: D102
        try:
            with sigterm_stops():
                return super().invoke(ctx)
        except RsrsError as err:
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            click.echo(f"Error: {err}", err=True)
            sys.exit(1)
        except KeyboardInterrupt as err:
            stopped_by = "Terminated (SIGTERM)" if isinstance(err, Terminated) else "Interrupted"
            click.echo(f"{stopped_by}; finished work is kept (rerun the same command to resume).", err=True)
            sys.exit(143 if isinstance(err, Terminated) else 130)


@click.group(cls=RsrsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Log progress details and the local Dask cluster's warnings (a worker that died); show tracebacks on errors.",
)
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
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
    for handler in logging.root.handlers:  # libraries that set their loggers to INFO (Dask) stay quiet too
        handler.setLevel(level)
    if not verbose:  # HTTP retries are not news: a request that finally fails becomes rsrs's own one-line error
        logging.getLogger("urllib3").setLevel(logging.ERROR)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="rsrs")
