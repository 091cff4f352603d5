# The C types of native_output.py when it is compiled (setup.py; roomcast._speedups): the
# fan-out writes into these objects once per recipient, so their fields are C struct members
# and their hot methods C calls. Declarations only: the code is the .py beside this file,
# which runs unchanged (its classes then ordinary slotted classes) when nothing is compiled.
# Internal classes: nothing outside server/ subclasses them.
cimport cython

cdef class WriteCoalescer:
    cdef list _dirty
    cdef bint _scheduled
    cdef public object counters
    cdef public double limit
    cdef Py_ssize_t _holds
    cdef bint _held
    cdef object _hold_timer

    cpdef void mark(self, CoalescedOutput output)
    cpdef void flush(self)
    cpdef void hold(self)
    cpdef void release(self)
    @cython.locals(output=CoalescedOutput)
    cpdef void _write_out(self)


cdef class CoalescedOutput:
    cdef public object transport
    cdef public Py_ssize_t high_water
    cdef public WriteCoalescer coalescer
    cdef public bint closing
    cdef object _out
    cdef bint _over
    cdef bint _lost
    cdef object _goodbye

    cpdef bint write(self, bytes data)
    cpdef void flush(self)


cdef class NativeStream(CoalescedOutput):
    cdef public object handler


cdef class NativeWebSocket(CoalescedOutput):
    cdef public object parser
    cdef public object handler
    cdef object _close_timer

    cpdef bint send_frames(self, bytes frames)
