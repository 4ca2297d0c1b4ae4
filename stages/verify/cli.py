"""`unforgotten verify`: any model (a local directory or a hub id; a whole model or a PEFT adapter) evaluated as an
unlearned model against the pipeline's base, oracle and retain references, with evaluate's metrics, attacks and
verdict, under the same params.yaml settings the pipeline's own unlearned runs get. With --tofu, against a TOFU
track's references instead (params.yaml `tofu`: e.g. open-unlearning's published TOFU models)."""

import click

from stages.common.options import StageCommand, config_of, hf_token_option, trust_remote_code_option

SECTIONS = ("evaluate", "training", "attacks", "verdict")  # params.yaml sections dvc.yaml passes every evaluation


@click.command("verify", cls=StageCommand, example=(
    "unforgotten verify --model their-lab/smollm2-medical-npo-adapter --name their-npo"), groups={
    "Model": "model name method base_model hf_token trust_remote_code",
    "Data": "tofu forget_set seed params dataset_dir eval_dir",
    "Output": "output_dir"})
@click.option("--model", required=True,
              help="The model to verify: a local directory or a hub id, holding a whole model or a PEFT adapter.")
@click.option("--name", default=None,
              help="Run name (its directory under --eval-dir and its report row) [default: from --model].")
@click.option("--method", default=None, help="What the report groups it by [default: the run name].")
@click.option("--base-model", "--base_model", "base_model", default=None,
              help="The base an adapter goes on [default: the one its adapter_config.json names].")
@click.option("--tofu", metavar="TRACK", default=None,
              help="Verify against a TOFU track of params.yaml's `tofu` section: its references (base, oracle, retain) "
                   "in outputs/eval-tofu/<TRACK>, TOFU's sets for its split in <dataset-dir>/tofu, and its own "
                   "evaluate settings after the shared ones.")
@click.option("--forget-set", "--forget_set", "forget_set", default=None,
              help="The forget set the model was unlearned on (the NN of dataset/med_synthetic_forgetNN.json) "
                   "[default: the first of params.yaml's forget_sets; with --tofu the track's split].")
@click.option("--seed", type=int, default=None,
              help="The training seed of the references (oracle-s<seed>, retain-f<NN>-s<seed>) and of the attacks "
                   "[default: the first of params.yaml's seeds; with --tofu params.yaml's seed].")
@click.option("--params", type=click.Path(dir_okay=False), default="params.yaml", show_default=True,
              help="The pipeline's params: its evaluate, training, attacks and verdict sections set every evaluate "
                   "option, as dvc.yaml sets them for the pipeline's own unlearned runs.")
@click.option("--dataset-dir", "--dataset_dir", "dataset_dir", type=click.Path(file_okay=False), default="dataset",
              show_default=True, help="The pipeline's record sets.")
@click.option("--eval-dir", "--eval_dir", "eval_dir", type=click.Path(file_okay=False), default=None,
              help="The pipeline's evaluations: base, oracle-s<seed> and retain-f<NN>-s<seed> [default: outputs/eval; "
                   "with --tofu outputs/eval-tofu/<TRACK>, holding base, oracle and retain].")
@click.option("--output-dir", "--output_dir", "output_dir", type=click.Path(file_okay=False), default=None,
              help="Where the evaluation goes [default: <eval-dir>/<name>, where `report` finds it].")
@hf_token_option
@trust_remote_code_option
def verify(**options):
    """Verify a model unlearned elsewhere: the pipeline's metrics, recovery attacks and verdict."""
    run(config_of(verify, options))


RUN_NAME = r"[A-Za-z0-9][A-Za-z0-9_-]*"  # a directory under --eval-dir and a report row; no dots, no paths
REFERENCE = r"base|oracle(-s[0-9]+)?|retain(-f[0-9]+-s[0-9]+)?"  # the references (a TOFU track's: base, oracle,
# retain), never overwritten


def run_name(model):
    """A run name from a model's path or hub id: its last part, in the characters run names use."""
    import re

    return re.sub(r"[^A-Za-z0-9_-]+", "-", model.rstrip("/").split("/")[-1]).strip("-_") or "model"


def check_name(name):
    """The run name, or a one-sentence error: it becomes <eval-dir>/<name>, so it must be a plain name that is not
    one of the references verify compares against."""
    import re

    if not re.fullmatch(RUN_NAME, name):
        raise click.UsageError(f"--name {name!r}: a run name is letters, digits, '-' and '_' (it names a directory).")
    if re.fullmatch(REFERENCE, name):
        raise click.UsageError(f"--name {name!r} is one of the pipeline's references; give the model another name.")
    return name


def section_args(section):
    """A params.yaml section as dvc.yaml's ${section} unpacks it (.dvc/config: lists appended, booleans as
    --key / --no-key)."""
    args = []
    for key, value in (section or {}).items():
        if isinstance(value, bool):
            args.append(f"--{key}" if value else f"--no-{key}")
        else:
            for item in value if isinstance(value, list) else [value]:
                args += [f"--{key}", str(item)]
    return args


def tofu_track(config, params):
    """The TOFU track --tofu names in params.yaml, or a one-sentence error."""
    tracks = params.get("tofu") or {}
    if config.tofu not in tracks:
        raise click.UsageError(f"--tofu {config.tofu}: {config.params} has no such TOFU track (its `tofu` section "
                               f"names {', '.join(map(repr, tracks)) or 'none'}).")
    return tracks[config.tofu]


def inputs(config, params):
    """The run name, forget set, seed and the pipeline files verify reads, each checked to exist (before any
    download)."""
    from pathlib import Path

    name = check_name(config.name or run_name(config.model))
    data = Path(config.dataset_dir)
    if config.tofu:  # a TOFU track: references evaluated once from its models (dvc.yaml evaluate-tofu-*)
        forget = config.forget_set or str(tofu_track(config, params).get("split", ""))
        seed = config.seed if config.seed is not None else params.get("seed", 42)
        evals = Path(config.eval_dir or f"outputs/eval-tofu/{config.tofu}")
        references = {"--reference": evals / "base", "--oracle": evals / "oracle", "--retain": evals / "retain"}
        files = {"--forget-file": data / "tofu" / f"tofu_forget{forget}.json",
                 "--retain-file": data / "tofu" / f"tofu_full_minus_forget{forget}.json",
                 "--holdout-file": data / "tofu" / f"tofu_holdout{forget}.json"}
    else:
        forget = config.forget_set or str((params.get("forget_sets") or [""])[0])
        seed = config.seed if config.seed is not None else (params.get("seeds") or [42])[0]
        evals = Path(config.eval_dir or "outputs/eval")
        references = {"--reference": evals / "base", "--oracle": evals / f"oracle-s{seed}",
                      "--retain": evals / f"retain-f{forget}-s{seed}"}
        reference_forget = params.get("reference_forget", forget)
        files = {"--forget-file": data / f"med_synthetic_forget{forget}.json",
                 "--retain-file": data / f"med_synthetic_full_minus_forget{reference_forget}.json",
                 "--holdout-file": data / "med_synthetic_holdout.json"}
    if not forget:
        raise click.UsageError(f"{config.params} names no forget set: give --forget-set.")
    for option, path in {**references, **files}.items():
        if not path.exists():
            raise click.ClickException(f"{path}: not found; verify needs the pipeline's {option[2:]} "
                                       f"(run `make run` first, or give --forget-set / --seed / --eval-dir).")
    return name, forget, seed, evals, {**references, **files}


def evaluate_args(config, model_dir, params):
    """evaluate's command line for this model, as dvc.yaml's evaluate-unlearned stage writes it."""
    from stages.common.models import is_full_model

    name, forget, seed, evals, paths = inputs(config, params)
    args = [a for section in SECTIONS for a in section_args(params.get(section))]
    if config.tofu:  # the track's own settings (e.g. its chat template) after the shared ones: the last one counts
        args += section_args(tofu_track(config, params).get("evaluate"))
    args += ["--attacks", "--seed", str(seed), "--run-name", name, "--method", config.method or name,
             "--forget-set", forget, "--adapter", str(model_dir),
             "--output-dir", config.output_dir or str(evals / name)]
    args += [str(a) for pair in paths.items() for a in pair]
    if config.base_model or is_full_model(model_dir):  # a whole model brings its own tokenizer
        args += ["--base-model", config.base_model or str(model_dir)]
    if config.trust_remote_code:
        args.append("--trust-remote-code")
    return args


def run(config):
    """verify's work: fetch the model if it is on the hub, then evaluate it as the pipeline evaluates its own."""
    from pathlib import Path

    import yaml

    from stages.common.io import InputError
    from stages.common.options import parse_config
    from stages.evaluate import cli as evaluate

    try:
        params = yaml.safe_load(Path(config.params).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise InputError(f"{config.params}: no such file (the pipeline's params.yaml).") from None
    inputs(config, params)  # a missing reference or a bad name fails before a download
    model_dir = config.model
    if not Path(model_dir).exists():  # a hub id: a whole model or an adapter, fetched with retries
        from stages.common.hub import download_model

        model_dir = download_model(config.model, token=config.hf_token)
    args = evaluate_args(config, model_dir, params)
    click.echo(f"verify {config.model}: unforgotten evaluate {' '.join(args)}")
    evaluate.run(parse_config(evaluate.evaluate, [*args, *(["--hf-token", config.hf_token] if config.hf_token
                                                           else [])]))
