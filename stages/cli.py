"""The `unforgotten` command group: one subcommand per pipeline stage. Heavy imports happen inside the commands."""

import click

from stages import __version__
from stages.common.io import InputError
from stages.evaluate.cli import evaluate
from stages.finetune.cli import finetune
from stages.generate.cli import generate
from stages.prepare_medical.cli import prepare_medical
from stages.prepare_tofu.cli import prepare_tofu
from stages.prepare_wmdp.cli import prepare_wmdp
from stages.report.cli import report
from stages.unlearn.cli import unlearn


class StageGroup(click.Group):
    """Turns bad-input errors raised deep in a stage into one-sentence CLI errors (exit code 1)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except InputError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=StageGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="unforgotten")
def main():
    """unforgotten: after an LLM is unlearned, is the knowledge gone or only hidden?"""
    import warnings

    # A deprecation inside peft's merge path, printed once per model load; nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


for command in (generate, prepare_medical, prepare_wmdp, prepare_tofu, finetune, unlearn, evaluate, report):
    main.add_command(command)
