"""The loader's one error type, apart so that every stage module can raise it."""


class DataError(RuntimeError):
    """Too many bad samples, or a stream that cannot go on: names the dataset and shard."""
