"""Click options and checks that several stage CLIs share."""

import textwrap

import click

DEFAULT_RATIOS = (0.10, 0.01, 0.05, 0.20)
HELP_GROUPS = ("Data", "Model", "Training", "Unlearning", "Monitoring", "Measurement", "Attacks", "Verdict", "Output")


def _shown(param):
    """The parameter with only its dash spellings: underscore aliases (--base_model) are accepted, not listed."""
    import copy

    shown = copy.copy(param)
    shown.opts = [o for o in param.opts if "_" not in o.lstrip("-")] or param.opts
    shown.secondary_opts = [o for o in param.secondary_opts if "_" not in o.lstrip("-")] or param.secondary_opts
    return shown


class StageCommand(click.Command):
    """A stage's command whose --help a person can read: the options under headings (`groups`: heading from
    HELP_GROUPS -> its parameter names, space-separated, in the order shown; every option in exactly one), one
    spelling each, and an `example` command line at the end."""

    def __init__(self, *args, groups, example, **kwargs):
        super().__init__(*args, **kwargs)
        unknown = sorted(set(groups) - set(HELP_GROUPS))
        if unknown:
            raise ValueError(f"{self.name}: help groups {unknown} are not in HELP_GROUPS")
        self.groups = {heading: names.split() for heading, names in groups.items()}
        lines = textwrap.wrap(example, 76, break_on_hyphens=False, break_long_words=False)
        self.epilog = "\b\nExample:\n  " + " \\\n      ".join(lines)

    def format_options(self, ctx, formatter):
        help_option = self.get_help_option(ctx)
        params = {p.name: p for p in self.get_params(ctx) if p is not help_option}
        listed = {name for names in self.groups.values() for name in names}
        sections = [*((h, self.groups.get(h, ())) for h in HELP_GROUPS),  # tests/test_cli.py: nothing left over
                    ("Other", [n for n in params if n not in listed])]
        for heading, names in sections:
            rows = [_shown(params[n]).get_help_record(ctx) for n in names if n in params]
            rows = [row for row in rows if row]
            if rows:
                with formatter.section(heading):
                    formatter.write_dl(rows)
        if help_option is not None:
            with formatter.section("Help"):
                formatter.write_dl([help_option.get_help_record(ctx)])


seed_option = click.option("--seed", type=int, default=42, show_default=True,
                           help="Seed of every random draw (sampling, shuffles, initialisation).")

hf_token_option = click.option(
    "--hf-token", "--hf_token", "hf_token", envvar="HF_TOKEN", default=None, show_envvar=True,
    help="Hub token for gated models and datasets (read from HF_TOKEN; never written anywhere).")


def check_ratios(ctx, param, values):
    from stages.common.params import ratio_tag

    for v in values:
        if not 0 < v < 1:
            raise click.BadParameter(f"{v} is not between 0 and 1 (exclusive)", ctx=ctx, param=param)
        try:
            ratio_tag(v)  # file names carry whole percentages
        except ValueError as e:
            raise click.BadParameter(str(e), ctx=ctx, param=param) from None
    return values


forget_ratios_option = click.option(
    "--forget-ratios", "--forget_ratios", "forget_ratios", type=float, multiple=True, default=DEFAULT_RATIOS,
    show_default=True, callback=check_ratios, help="Forget-set fractions of the full set; repeat for several.")

max_seq_length_option = click.option(
    "--max-seq-length", "--max_seq_length", "max_seq_length", type=click.IntRange(min=8), default=256,
    show_default=True, help="Tokens per example (the chat-formatted question and answer), cut at this length.")

def quantization_options(command):
    """--use-8bit / --use-4bit: the base model loaded through bitsandbytes (QLoRA: nf4 with bf16 compute where
    native, double quantization), on a GPU or a CPU alike (models.quantization_config)."""
    command = click.option("--use-4bit", "--use_4bit", "use_4bit", is_flag=True,
                           help="Load the base in 4-bit nf4 through bitsandbytes (QLoRA), on a GPU or a CPU.")(command)
    return click.option("--use-8bit", "--use_8bit", "use_8bit", is_flag=True,
                        help="Load the base in 8 bits (LLM.int8) through bitsandbytes, on a GPU or a CPU.")(command)


PRECISIONS = ["auto", "fp32", "bf16"]  # stages.common.models.resolve_precision

trust_remote_code_option = click.option(
    "--trust-remote-code", "--trust_remote_code", "trust_remote_code", is_flag=True,
    help="Let a model that ships its own Python code (auto_map) run it; refused without this flag.")


def _field_type(param):
    """The Python type of a click parameter's converted value, for its config field."""
    import typing

    kind = param.type
    base = (bool if isinstance(kind, click.types.BoolParamType) else
            int if isinstance(kind, click.types.IntParamType) else
            float if isinstance(kind, click.types.FloatParamType) else str)
    if param.multiple:
        return tuple[base, ...]
    return base if param.required or param.default is not None else typing.Optional[base]


_CONFIGS = {}


def stage_config(command):
    """The frozen, typed config of a stage: a dataclass named after the command with one field per parameter of its
    click command (click's parameter name and converted value), so the stage's run(config) takes one value, and
    option names, defaults and help stay click's alone."""
    import dataclasses

    if command not in _CONFIGS:
        name = "".join(part.capitalize() for part in command.name.split("-")) + "Config"
        # a value read from the environment (HF_TOKEN) is a secret: never in the config's repr, so never in a log
        _CONFIGS[command] = dataclasses.make_dataclass(
            name, [(p.name, _field_type(p), dataclasses.field(repr=not p.envvar)) for p in command.params
                   if p.name != "help"], frozen=True)
    return _CONFIGS[command]


def config_of(command, options):
    """The command's config from the options click passed to it."""
    return stage_config(command)(**options)


def parse_config(command, args):
    """The command's config from a command line (its defaults for every option not given), as click builds it: for
    code that runs a stage's work without its CLI (bench/)."""
    return config_of(command, command.make_context(command.name, list(args)).params)
