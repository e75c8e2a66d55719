"""The `fusion-ser` entry point: a click group whose commands live one per module and load lazily."""

from __future__ import annotations

import importlib
import logging

import click

# command name -> module holding a click command named `command`
COMMANDS = {
    "prepare": "fusion_ser.cli.prepare",
    "transcribe": "fusion_ser.cli.transcribe",
    "train": "fusion_ser.cli.train",
    "fuse": "fusion_ser.cli.fuse",
    "ensemble": "fusion_ser.cli.ensemble",
    "evaluate": "fusion_ser.cli.evaluate",
    "compare": "fusion_ser.cli.compare",
    "export-submission": "fusion_ser.cli.export_submission",
    "export-onnx": "fusion_ser.cli.export_onnx",
    "test": "fusion_ser.cli.test",
    "predict": "fusion_ser.cli.predict",
    "embed": "fusion_ser.cli.embed",
    "demo": "fusion_ser.cli.demo",
}


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs, so `--help` and startup stay fast."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, mod in COMMANDS.items() if importlib.util.find_spec(mod) is not None]

    def get_command(self, ctx: click.Context, name: str):
        mod = COMMANDS.get(name)
        if mod is None or importlib.util.find_spec(mod) is None:
            return None
        return importlib.import_module(mod).command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="fusion-ser")
def main(verbose: int) -> None:
    """Speech emotion recognition from audio, text and both: prepare, transcribe, train, fuse, ensemble, compare, predict."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    main()
