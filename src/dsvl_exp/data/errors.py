from dsvl_exp.errors import UserError


class DataError(UserError, ValueError):
    """Bad input data. The message names the file / sample / field and says what to fix."""
