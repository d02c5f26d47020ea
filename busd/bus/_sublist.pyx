# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The subscription index: which subscribed patterns a subject matches, without trying
every pattern on every record.

Literal patterns (most subscriptions: one exact subject) sit in a dict keyed by the
subject itself. Wildcard patterns sit in a token trie, as in NATS's sublist: a node per
token, a `*` child for one-token wildcards, and at each node the values whose pattern
ends there (`here`) or ends there with `>` (`rest`: zero or more further tokens, so
`a.x.>` matches `a.x`). Tokens split on `.`. A bounded cache remembers what each recent
subject matched, since a trie walk costs a dict lookup per token and per `*` branch; any
insert or delete empties it.

A pattern may carry several values, and a value may sit under several patterns (a
subscription with several `subject=`): a subject gets each value once, however many of
its patterns it matches.

`split_sse` is the live fan-out's one pass over an append: its records grouped per value
and each group framed as one SSE chunk (the frame busd._core.sse_frame writes), so the
fan-out makes no Python call per group but the pushes.

tests/oracle.py holds plain-Python twins (`sublist_match`, `sublist_split`, `sse_frame`)
that the tests compare with.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.list cimport PyList_CheckExact, PyList_GET_ITEM, PyList_GET_SIZE
from cpython.ref cimport PyObject
from libc.string cimport memchr

from busd._core cimport (
    ID_AT, SSE_OVERHEAD, SUBJECT_AFTER_ID, _chunk_size, _id_end, _put_chunk_head, _put_sse)

cdef extern from "Python.h":
    dict _PyDict_NewPresized(Py_ssize_t minused)  # CPython's own, in its public headers

CACHE_MAX = 4096  # subjects whose matches are remembered; the cache empties when full
cdef enum:
    PRESIZE_MAX = 256  # groups an append's dict is made for at first

cdef tuple NOTHING = ()


cdef class _Node:
    """One trie node: what follows it by token, by `*`, and the values ending here."""

    cdef dict children
    cdef _Node star
    cdef list here
    cdef list rest

    def __cinit__(self):
        self.children = {}
        self.star = None
        self.here = []
        self.rest = []

    cdef bint empty(self):
        return not (self.children or self.star is not None or self.here or self.rest)


cdef inline bint _is_literal(list tokens):
    for t in tokens:
        if t == b"*" or t == b">":
            return False
    return True


cdef void _walk(_Node node, list tokens, Py_ssize_t i, list out):
    """Append to out the values of every pattern below node matching tokens[i:]."""
    cdef Py_ssize_t n = PyList_GET_SIZE(tokens)
    cdef PyObject* child
    while True:
        if node.rest:
            out.extend(node.rest)
        if i == n:
            out.extend(node.here)
            return
        if node.star is not None:
            _walk(node.star, tokens, i + 1, out)
        child = PyDict_GetItem(node.children, <object>PyList_GET_ITEM(tokens, i))
        if child == NULL:
            return
        node = <_Node>child
        i += 1


cdef class Sublist:
    """Patterns (validated subscribe patterns, as bytes) mapped to values: a many-to-many
    map."""

    cdef dict _values    # pattern -> list of its values, every pattern
    cdef dict _literal   # literal pattern -> tuple of its values
    cdef _Node _root     # the wildcard patterns
    cdef Py_ssize_t _wildcards  # (pattern, value) pairs in the trie
    cdef Py_ssize_t _pairs      # (pattern, value) pairs in all
    cdef dict _cache     # subject -> tuple of values (only while there are wildcards)

    def __cinit__(self):
        self._values = {}
        self._literal = {}
        self._root = _Node()
        self._wildcards = 0
        self._pairs = 0
        self._cache = {}

    def __len__(self):
        """How many (pattern, value) pairs."""
        return self._pairs

    def __contains__(self, bytes pattern):
        return pattern in self._values

    def values(self, bytes pattern not None):
        """The values under pattern (empty when it has none)."""
        return tuple(self._values.get(pattern, ()))

    @property
    def cached(self):
        """How many subjects' matches are remembered (at most CACHE_MAX)."""
        return len(self._cache)

    def insert(self, bytes pattern not None, value):
        """Put value under pattern (nothing happens if it is there already)."""
        cdef list tokens = pattern.split(b".")
        cdef list values = self._values.setdefault(pattern, [])
        cdef _Node node
        if value in values:
            return
        values.append(value)
        self._pairs += 1
        self._cache.clear()
        if _is_literal(tokens):
            self._literal[pattern] = tuple(values)
            return
        node = self._leaf(tokens, True)
        (node.rest if tokens[len(tokens) - 1] == b">" else node.here).append(value)
        self._wildcards += 1

    def delete(self, bytes pattern not None, value):
        """Take value from under pattern (nothing happens if it is not there)."""
        cdef list tokens, path
        cdef list values = self._values.get(pattern)
        cdef _Node node, parent
        if values is None or value not in values:
            return
        values.remove(value)
        if not values:
            del self._values[pattern]
        self._pairs -= 1
        self._cache.clear()
        tokens = pattern.split(b".")
        if _is_literal(tokens):
            if values:
                self._literal[pattern] = tuple(values)
            else:
                del self._literal[pattern]
            return
        self._wildcards -= 1
        path = []
        node = self._root
        for t in tokens[:len(tokens) - 1] if tokens[len(tokens) - 1] == b">" else tokens:
            path.append((node, t))
            node = node.star if t == b"*" else node.children[t]
        (node.rest if tokens[len(tokens) - 1] == b">" else node.here).remove(value)
        while path and node.empty():  # prune the branch it leaves empty
            parent, t = path.pop()
            if t == b"*":
                parent.star = None
            else:
                del parent.children[t]
            node = parent

    cdef _Node _leaf(self, list tokens, bint create):
        """The node a wildcard pattern's values hang from (a `>` pattern: its parent)."""
        cdef _Node node = self._root, nxt
        cdef Py_ssize_t k = len(tokens) - (1 if tokens[len(tokens) - 1] == b">" else 0), i
        for i in range(k):
            t = tokens[i]
            if t == b"*":
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                nxt = node.children.get(t)
                if nxt is None:
                    nxt = node.children[t] = _Node()
                node = nxt
        return node

    cpdef tuple match(self, bytes subject):
        """The values of every pattern that subject matches (each value once)."""
        cdef PyObject* hit
        cdef list out
        cdef tuple result
        if self._wildcards == 0:
            hit = PyDict_GetItem(self._literal, subject)
            return NOTHING if hit == NULL else <tuple>hit
        hit = PyDict_GetItem(self._cache, subject)
        if hit != NULL:
            return <tuple>hit
        out = []
        hit = PyDict_GetItem(self._literal, subject)
        if hit != NULL:
            out.extend(<tuple>hit)
        _walk(self._root, subject.split(b"."), 0, out)
        result = tuple(out) if len(out) < 2 else tuple(dict.fromkeys(out))
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[subject] = result
        return result

    def split(self, list records not None):
        """Records (stored records, in order) grouped by the values whose pattern their
        subject matches: [(value, [record, ...]), ...], each group in record order, groups
        in the order their first record came."""
        return [(value, group if PyList_CheckExact(group) else [group])
                for value, group in self._groups(records).items()]

    def split_sse(self, list records not None):
        """split's groups, each as one SSE chunk: [(value, chunk, records in it), ...]."""
        cdef list out = []
        for value, group in self._groups(records).items():
            out.append((value, _sse_of_group(group),
                        PyList_GET_SIZE(group) if PyList_CheckExact(group) else 1))
        return out

    cdef dict _groups(self, list records):
        """value -> its records, in record order (a dict keeps the order values came): a
        value that one record matched maps to that record itself, not a list of it (most of
        an append's groups, with distinct subscriptions: one list fewer per delivery). The
        dict is made at the size a batch's records may need (PRESIZE_MAX at most: a large
        append to a few filters must not pay for a table it leaves empty), so a batch's
        distinct groups do not make it grow while it is filled."""
        cdef Py_ssize_t i, n = PyList_GET_SIZE(records), rn, at
        cdef dict groups = _PyDict_NewPresized(min(n, PRESIZE_MAX))
        cdef const char* r
        cdef const char* q
        cdef PyObject* group
        cdef tuple matched
        cdef object rec
        cdef bytes subject
        for i in range(n):
            rec = <object>PyList_GET_ITEM(records, i)
            rn = PyBytes_GET_SIZE(rec)
            r = PyBytes_AS_STRING(rec)
            at = _id_end(r, rn) + SUBJECT_AFTER_ID  # the subject follows the id
            q = NULL if at <= SUBJECT_AFTER_ID or at >= rn else <const char*>memchr(
                r + at, c'"', <size_t>(rn - at))
            if q == NULL:
                raise ValueError("not a record: no subject after its id")
            subject = PyBytes_FromStringAndSize(r + at, q - r - at)
            matched = self.match(subject)
            for value in matched:
                group = PyDict_GetItem(groups, value)
                if group == NULL:
                    groups[value] = rec
                elif PyList_CheckExact(<object>group):
                    (<list>group).append(rec)
                else:
                    groups[value] = [<object>group, rec]
        return groups


cdef bytes _sse_of_group(object group):
    """The chunk of a group's records: _groups's record, or list of them (each has an id:
    _groups checked it)."""
    cdef bint one = not PyList_CheckExact(group)
    cdef Py_ssize_t i, n = 1 if one else PyList_GET_SIZE(group), text = 0, rn
    cdef const char* r
    cdef bytes rec, out
    cdef char* o
    for i in range(n):
        rec = <bytes>group if one else <bytes>PyList_GET_ITEM(group, i)
        r = PyBytes_AS_STRING(rec)
        rn = PyBytes_GET_SIZE(rec)
        text += SSE_OVERHEAD + _id_end(r, rn) - ID_AT + rn
    out = PyBytes_FromStringAndSize(NULL, _chunk_size(text))
    o = _put_chunk_head(PyBytes_AS_STRING(out), text)
    for i in range(n):
        rec = <bytes>group if one else <bytes>PyList_GET_ITEM(group, i)
        r = PyBytes_AS_STRING(rec)
        rn = PyBytes_GET_SIZE(rec)
        o = _put_sse(o, r, rn, _id_end(r, rn))
    o[0] = c'\r'
    o[1] = c'\n'
    return out
