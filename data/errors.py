"""The data layer's error for a set to prepare or repair (as opposed to a bug)."""


class DataSetError(ValueError):
    """A prepared data set is missing, incomplete or does not match what was asked for."""
