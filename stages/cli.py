"""The `unforgotten` command group: one subcommand per row of the stage table (stages/table.py). Heavy imports
happen inside the commands."""

import click

from stages import __version__, table
from stages.common.io import InputError


class StageGroup(click.Group):
    """Errors raised inside a stage become one sentence and exit code 1: bad input (InputError) as it is, anything
    else with its type and a pointer to --debug, which shows the traceback instead."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except InputError as e:
            if ctx.params.get("debug"):
                raise
            raise click.ClickException(str(e)) from None
        except Exception as e:  # noqa: BLE001 - the last line of defence against a traceback
            if ctx.params.get("debug"):
                raise
            detail = str(e).strip().splitlines()[0] if str(e).strip() else "no message"
            raise click.ClickException(f"{type(e).__name__}: {detail} (run `unforgotten --debug ...` or set "
                                       "UNFORGOTTEN_DEBUG=1 for the traceback).") from None


@click.group(cls=StageGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="unforgotten")
@click.option("--debug", is_flag=True, envvar="UNFORGOTTEN_DEBUG", help="Show the traceback of an error.")
def main(debug):
    """unforgotten: after an LLM is unlearned, is the knowledge gone or only hidden?"""
    import warnings

    # A deprecation inside peft's merge path, printed once per model load; nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


for stage in table.STAGES:
    main.add_command(table.command(stage), stage.name)
