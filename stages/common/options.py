"""Click options and checks that several stage CLIs share."""

import click

DEFAULT_RATIOS = (0.10, 0.01, 0.05, 0.20)


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

PRECISIONS = ["auto", "fp32", "bf16"]  # stages.common.models.resolve_precision

trust_remote_code_option = click.option(
    "--trust-remote-code", "--trust_remote_code", "trust_remote_code", is_flag=True,
    help="Let a model that ships its own Python code (auto_map) run it; refused without this flag.")
