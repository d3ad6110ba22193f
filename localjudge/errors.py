"""The one base of the errors a user can fix (a bad input, option, file or server): the CLI prints each as one
clear line instead of a traceback. Each module keeps its own error class, derived from it."""


class UserError(Exception):
    pass


class OptionError(UserError):
    """Options that do not fit together (the CLI reports it as a usage error, exit status 2)."""
