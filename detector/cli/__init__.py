"""The ``buildwatch`` command line: one click group, one module per subcommand.

Subcommands are loaded lazily so that ``buildwatch --help`` stays fast and heavy imports
(rasterio, onnxruntime, ultralytics) happen only in the command that needs them.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from detector import __version__

# command name -> "module:attribute"; each module holds one click command.
COMMANDS = {
    "synth": "detector.cli.synth_cmd:synth",
    "run": "detector.cli.run_cmd:run",
    "ingest": "detector.cli.ortho_cmd:ingest",
    "ortho": "detector.cli.ortho_cmd:ortho",
    "cases": "detector.cli.cases_cmd:cases",
    "model-info": "detector.cli.model_cmd:model_info",
    "models": "detector.cli.model_cmd:models",
    "retrain": "training.cli:retrain",
    "train": "training.cli:train",
    "export": "training.cli:export",
    "evaluate": "training.cli:evaluate",
    "build-dataset": "training.cli:build_dataset",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or "?"
            if missing.startswith(("detector", "training")):
                raise
            raise click.ClickException(
                f"'buildwatch {name}' needs the Python package '{missing}', which is not installed. "
                f"For training commands install the extra: pip install -e '.[train]'"
            ) from None
        return getattr(module, attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="buildwatch")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """buildwatch: find newly built structures between two drone orthomosaics."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # the run's log file gets INFO; the terminal only this
        handler.setLevel(level)


def main(argv=None) -> int:
    """Entry point: user errors -> one line + exit 2; internal errors -> exit 1."""
    from detector.errors import BuildwatchError

    try:
        cli.main(args=argv, standalone_mode=False)
    except BuildwatchError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return 2
    except KeyboardInterrupt:
        click.echo("interrupted; finished tiles are kept, rerun the same command to resume", err=True)
        return 130
    except SystemExit as exc:  # click's --help / --version
        return exc.code if isinstance(exc.code, int) else 0
    except Exception as exc:  # noqa: BLE001 - last resort, logged with traceback in the log file
        logging.getLogger(__name__).exception("internal error")
        click.echo(f"internal error: {type(exc).__name__}: {exc} (please report; see the log)", err=True)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
