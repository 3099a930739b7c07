"""The one error type users see as a single line (the CLI prints it and exits non-zero)."""


class UserError(Exception):
    """Bad input: the message says what is wrong and how to fix it."""


def no_extra(extra: list[str]) -> None:
    """One line for arguments a command without config fields does not take."""
    if extra:
        raise UserError(f"unrecognized arguments: {' '.join(extra)}")
