# The C layout of api.py's Api when it is compiled (setup.py): its attributes typed, so that
# routing a request reads them as struct fields. api.py stays the source, and runs
# uncompiled as the oracle in tests/server/test_publish_compiled.py.

cimport cython

from busd._core cimport published_response, scan_body
from busd.bus.broker cimport Broker
from busd.bus.publication cimport Publication
from busd.server.http cimport HttpConnection, Request, status_head


cdef class Api:
    cdef public Broker broker
    cdef public object config, auth, console
    cdef public Py_ssize_t max_batch, max_event_size
    cdef public double started

    cpdef route(self, HttpConnection conn, Request request)
    cpdef publish(self, HttpConnection conn, Request request, token=*)


cdef class PublishAnswer(Publication):
    cdef HttpConnection conn
    cdef Py_ssize_t ticket
    cdef bint close, is_batch

    cpdef answer(self, list ids, list stamps, outcome)


@cython.locals(answer=PublishAnswer)
cdef PublishAnswer publish_answer(HttpConnection conn, Py_ssize_t ticket, bint close,
                                  bint is_batch)
