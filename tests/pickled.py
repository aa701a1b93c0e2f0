"""A decorated module-level function, importable by worker processes."""

from instrument import monitored_analysis


@monitored_analysis("pool", "double")
def module_level_analysis(x: int) -> int:
    return x * 2
