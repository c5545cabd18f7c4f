class DataError(ValueError):
    """Bad input data. The message names the file / sample / field and says what to fix."""
