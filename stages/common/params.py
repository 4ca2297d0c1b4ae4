"""params.yaml holds every knob; stages get their values through dvc.yaml's ${...}. What stages share about it:
how a forget ratio is written in file and run names."""


def ratio_tag(ratio):
    """0.1 -> '10', 0.01 -> '01': the NN of SPEC's file names and of run names such as grad_ascent-f10."""
    percent = round(float(ratio) * 100)
    if not 0 < percent < 100 or abs(percent - float(ratio) * 100) > 1e-6:
        raise ValueError(f"forget ratio {ratio} is not a whole percentage between 1 % and 99 %")
    return f"{percent:02d}"
