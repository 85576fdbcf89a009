"""The one exception type for user mistakes: the CLI prints it as one line and exits 2."""


class UserError(Exception):
    """A problem with what the user asked for (bad path, unknown name, bad file), not a bug."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""
