"""Reading a NamespaceLog whole, for the store tests."""


def read_all(nslog, start=None, max_bytes=1 << 20):
    """Every record from `start` (default the first retained) to the head, in order."""
    out, i = [], nslog.first_index if start is None else start
    while i < nslog.next_index:
        got = nslog.read(i, max_bytes)
        assert got, i
        out += got
        i += len(got)
    return out
