"""The DLPack bridge (csrc/dlpack_bridge.cpp): zero-copy views, capsule consumption and lifetimes."""

from __future__ import annotations

import gc
import sys

import numpy as np
import pytest
import torch

from sitm_trt import kernels as K


def ext():
    return K.extension()


def test_view_is_zero_copy_for_numpy_and_torch():
    a = np.zeros((2, 3, 4, 5), np.float32)
    info = ext().view_info(a.__dlpack__())
    assert info["data_ptr"] == a.ctypes.data
    assert info["shape"] == (2, 3, 4, 5) and info["dtype"] == "float32" and info["device"] == "cpu"
    t = torch.zeros(7, 6, 3, dtype=torch.uint8)[1:]  # a view with an offset into its storage
    info = ext().view_info(t.__dlpack__())
    assert info["data_ptr"] == t.data_ptr() and info["shape"] == (6, 6, 3)


@pytest.mark.parametrize("versioned", [False, True])
def test_consumed_capsule_releases_the_producer(versioned):
    a = np.zeros((4, 4, 3), np.uint8)
    base = sys.getrefcount(a)
    cap = a.__dlpack__(max_version=(1, 0)) if versioned else a.__dlpack__()
    assert sys.getrefcount(a) == base + 1  # the managed tensor holds the array
    ext().view_info(cap)  # consumes the capsule and drops the view: the producer's deleter must run
    assert sys.getrefcount(a) == base
    del cap
    assert sys.getrefcount(a) == base


def test_capsule_can_be_consumed_once():
    cap = np.zeros((2, 2, 3), np.uint8).__dlpack__()
    ext().view_info(cap)
    with pytest.raises(ValueError, match="already consumed"):
        ext().view_info(cap)


def test_unconsumed_capsule_releases_the_producer():
    a = np.zeros(8, np.float32)
    base = sys.getrefcount(a)
    cap = a.__dlpack__()
    del cap
    gc.collect()
    assert sys.getrefcount(a) == base


def test_view_outlives_the_producer_name():
    """The producer's Python name may go away: the capsule keeps the memory alive until consumed."""
    cap = torch.full((1, 3, 2, 2), 0.5).__dlpack__()
    gc.collect()
    out = ext().curve(cap, torch.tensor([[0.0, 2.0, 0.0, 0.0]]).__dlpack__(), "float32", None, 0)
    assert torch.all(torch.from_dlpack(out) == 1.0)


def test_read_only_flag_is_seen():
    a = np.zeros((2, 2, 3), np.uint8)
    a.flags.writeable = False
    assert ext().view_info(a.__dlpack__(max_version=(1, 0)))["read_only"] is True


def test_not_a_dlpack_capsule():
    import ctypes

    cap = ctypes.pythonapi.PyCapsule_New
    cap.restype = ctypes.py_object
    cap.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    other = cap(ctypes.c_void_p(8).value, b"something_else", None)
    with pytest.raises(ValueError, match="capsule named 'something_else'"):
        ext().view_info(other)


def test_buffer_exports_to_numpy_and_torch_without_copies():
    buf = ext().pre(np.zeros((3, 5, 3), np.uint8).__dlpack__(), 1, "float16", None, 0)[0]
    assert isinstance(buf, ext().Buffer)
    assert buf.shape == (1, 3, 3, 5) and buf.dtype == "float16" and buf.device == "cpu" and buf.nbytes == 90
    assert buf.__dlpack_device__() == (1, 0)
    n = np.from_dlpack(buf)
    t = torch.from_dlpack(buf)
    assert n.ctypes.data == buf.data_ptr == t.data_ptr()
    assert n.dtype == np.float16 and t.dtype == torch.float16
    del buf
    gc.collect()
    n[...] = 2.0  # memory stays alive as long as an array uses it
    assert float(t.sum()) == 2.0 * 45


def test_buffer_dlpack_arguments():
    buf = ext().pre(np.zeros((2, 2, 3), np.uint8).__dlpack__(), 1, "float32", None, 0)[3]
    with pytest.raises(ValueError, match="copy=True"):
        buf.__dlpack__(copy=True)
    with pytest.raises(BufferError, match="another device"):
        buf.__dlpack__(dl_device=(2, 0))
    legacy = buf.__dlpack__()
    assert "dltensor" in repr(legacy) and "versioned" not in repr(legacy)
    assert "dltensor_versioned" in repr(buf.__dlpack__(max_version=(1, 0)))


def test_results_follow_the_input_type():
    f = np.zeros((2, 2, 3), np.uint8)
    assert isinstance(K.pre(f).image, np.ndarray)
    assert isinstance(K.pre(torch.from_numpy(f)).image, torch.Tensor)
    # a producer with no from_dlpack of its own gets the extension's Buffer
    class Producer:
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, **kw):
            return self.a.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()

    res = K.pre(Producer(f)).image
    assert isinstance(res, ext().Buffer) and np.from_dlpack(res).shape == (1, 3, 2, 2)


def test_buffer_view_reuses_memory_and_checks_capacity():
    C = ext()
    b = C.empty([2, 3, 4], "float32")
    assert b.capacity == 96 and b.nbytes == 96
    v = b.view([1, 3, 2, 2])
    assert v.data_ptr == b.data_ptr and v.nbytes == 48 and v.capacity == 96
    np.from_dlpack(b)[...] = 3.0
    assert np.all(np.from_dlpack(v) == 3.0)
    assert b.view([96], "uint8").nbytes == 96
    with pytest.raises(ValueError, match="needs 400 bytes, the buffer has 96"):
        b.view([100])
    del b
    gc.collect()
    assert np.all(np.from_dlpack(v) == 3.0)  # the view keeps the allocation alive


def test_copy_between_host_arrays():
    C = ext()
    src = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    dst = C.empty([24], "float32")
    C.copy(dst.__dlpack__(), src.__dlpack__())
    np.testing.assert_array_equal(np.from_dlpack(dst), src.ravel())
    with pytest.raises(ValueError, match="differ in size"):
        C.copy(np.zeros(3, np.float32).__dlpack__(), src.__dlpack__())


@pytest.mark.gpu
def test_copy_host_device_round_trip():
    C = ext()
    src = np.arange(24, dtype=np.float32)
    dev = C.empty([24], "float32", "cuda:0")
    back = np.zeros(24, np.float32)
    C.copy(dev.__dlpack__(), src.__dlpack__())
    C.copy(back.__dlpack__(), dev.__dlpack__(stream=1))
    C.synchronize()
    np.testing.assert_array_equal(back, src)


def test_error_after_consuming_an_exported_buffer_keeps_its_message():
    """A Buffer's capsule dies while the kernel's ValueError propagates: the error must survive."""
    b = ext().empty([1, 3, 8, 8], "float32")
    m = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"post: out must be float32 \(1, 3, 8, 8\)"):
        K.post(m, b, m, m, torch.rand(1, 4), out=torch.empty(1, 3, 8, 9))
