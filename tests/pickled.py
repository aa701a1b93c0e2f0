"""A decorated module-level function, importable by worker processes."""

from instrument import monitored_analysis


@monitored_analysis("pool", "double")
def module_level_analysis(x: int) -> int:
    return x * 2


def undecorated_base(a: int, b: int) -> int:
    return a + b


class Scaler:
    def __init__(self, k: int) -> None:
        self.k = k

    def scale(self, x: int) -> int:
        return x * self.k


#: Decorated under another name: ``undecorated_base`` resolves to the undecorated function.
alias = monitored_analysis("pool", "alias")(undecorated_base)
#: A decorated bound method: its qualified name resolves to the undecorated method.
tracked_bound = monitored_analysis("pool", "bound")(Scaler(3).scale)
