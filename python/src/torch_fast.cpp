// gclip._torch_fast: the per-call scan of gclip.torch's drop-ins in C++.
//
// One pass over a list of parameters (or tensors) reads, for each gradient,
// what the plan cache needs (element count, dtype, device) and what the plan
// needs (the data pointer), with no Python call per tensor. Built only when
// PyTorch is importable at build time; gclip.torch falls back to Python
// otherwise.
#include <Python.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

namespace {

// Signature record of one gradient: what a plan is keyed by.
struct SigEntry {
    int64_t numel;
    int32_t dtype;   // c10::ScalarType
    int32_t device;  // -1 CPU, CUDA ordinal, or -2 - device type for others
};

enum : long {
    kDense = 1,       // every gradient is strided and non-overlapping-and-dense
    kOneDevice = 2,   // every gradient is on the first one's device
    kAllF32 = 4,      // every gradient is float32
    kFastDtypes = 8,  // every gradient is float32, float16 or bfloat16
    kNoInference = 16,  // no gradient is an inference tensor
};

// A new reference, released when the scope ends (an exception included).
struct Owned {
    PyObject *p;
    ~Owned() { Py_XDECREF(p); }
};

// The gradients of this thread's last scan, held until release(): the
// library then runs with the GIL released, and another thread that drops a
// .grad meanwhile must not free memory it writes.
thread_local std::vector<at::Tensor> held;

// Whether an item's type reads .grad otherwise than the tensor's own
// accessor (a subclass's Python property): then the gradient is what that
// property returns, which only Python can read.
bool grad_overridden(PyObject *o)
{
    static PyObject *name = PyUnicode_InternFromString("grad");
    static PyObject *own = _PyType_Lookup(reinterpret_cast<PyTypeObject *>(THPVariableClass), name);
    return _PyType_Lookup(Py_TYPE(o), name) != own;
}

int32_t device_code(const at::Tensor &t)
{
    const c10::Device d = t.device();
    if (d.is_cpu())
        return -1;
    if (d.is_cuda())
        return d.index();
    return -2 - static_cast<int32_t>(d.type());
}

// scan(items, from_params, ptr_address, capacity)
//   -> (count, signature: bytes, flags: int, device: int); count is -1, and
//   nothing else is read, when an item is not a tensor
// Holds the gradients it read until release() (or the next scan).
// Writes the data pointers of the first `capacity` gradients to the
// uintptr_t array at ptr_address (0 to skip). from_params: read .grad of each
// item and skip None; else take the items themselves.
PyObject *scan(PyObject *, PyObject *args)
{
    // PyTorch's error and warning translation: an accessor that raises (a
    // tensor subclass's Python code) becomes this call's Python exception,
    // and a C++ warning (the .grad of a non-leaf) a Python warning
    HANDLE_TH_ERRORS
    PyObject *items;
    int from_params;
    unsigned long long ptr_address;
    Py_ssize_t capacity;
    if (!PyArg_ParseTuple(args, "OpKn", &items, &from_params, &ptr_address, &capacity))
        return nullptr;
    Owned seq{PySequence_Fast(items, "gclip: expected a list or tuple of tensors")};
    if (!seq.p)
        return nullptr;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.p);
    PyObject **objs = PySequence_Fast_ITEMS(seq.p);
    auto *ptrs = reinterpret_cast<uintptr_t *>(static_cast<uintptr_t>(ptr_address));

    std::vector<SigEntry> sig;
    sig.reserve(static_cast<size_t>(n));
    held.clear();
    long flags = kDense | kOneDevice | kAllF32 | kFastDtypes | kNoInference;
    int32_t first_device = 0;
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = objs[i];
        if (!THPVariable_Check(o) || (from_params && grad_overridden(o))) {
            // not a tensor (an object with a .grad, or None), or a tensor
            // whose .grad is a Python property: the caller's general path
            // reads the list as PyTorch does, and says what is wrong
            held.clear();
            return Py_BuildValue("(nyli)", static_cast<Py_ssize_t>(-1), "", 0L, 0);
        }
        const at::Tensor &v = THPVariable_Unpack(o);
        const at::Tensor &t = from_params ? v.grad() : v;
        if (!t.defined())
            continue;
        const int32_t dev = device_code(t);
        if (count == 0)
            first_device = dev;
        else if (dev != first_device)
            flags &= ~kOneDevice;
        const c10::ScalarType st = t.scalar_type();
        if (st != c10::ScalarType::Float)
            flags &= ~kAllF32;
        if (st != c10::ScalarType::Float && st != c10::ScalarType::Half &&
            st != c10::ScalarType::BFloat16)
            flags &= ~kFastDtypes;
        if (t.is_inference())
            flags &= ~kNoInference;
        uintptr_t data = 0;
        if (t.layout() != c10::kStrided || !t.has_storage() ||
            !(t.is_contiguous() || t.is_non_overlapping_and_dense())) {
            flags &= ~kDense;
        } else {
            data = reinterpret_cast<uintptr_t>(t.data_ptr());
            // no memory behind a non-empty tensor (a wrapper subclass, a
            // functional or zero tensor): the general path explains
            if (data == 0 && t.numel() > 0)
                flags &= ~kDense;
        }
        if (ptrs && count < capacity)
            ptrs[count] = data;
        held.push_back(t);
        sig.push_back(SigEntry{t.numel(), static_cast<int32_t>(st), dev});
        count++;
    }
    PyObject *sig_bytes = PyBytes_FromStringAndSize(reinterpret_cast<const char *>(sig.data()),
                                                    static_cast<Py_ssize_t>(sig.size() * sizeof(SigEntry)));
    if (!sig_bytes)
        return nullptr;
    return Py_BuildValue("(nNli)", count, sig_bytes, flags, static_cast<int>(first_device));
    END_HANDLE_TH_ERRORS
}

// bump_versions(items, from_params) -> None
// Increments the autograd version counter of each gradient (from_params: the
// .grad of each item, skipping None; else the items), as a PyTorch in-place
// op does: a graph that saved one of them then refuses to backpropagate
// through the stale value. Tensors without a version counter (inference
// tensors) are left as they are.
PyObject *bump_versions(PyObject *, PyObject *args)
{
    HANDLE_TH_ERRORS
    PyObject *items;
    int from_params;
    if (!PyArg_ParseTuple(args, "Op", &items, &from_params))
        return nullptr;
    Owned it{PyObject_GetIter(items)};
    if (!it.p)
        return nullptr;
    while (PyObject *next = PyIter_Next(it.p)) {
        Owned o{next};
        Owned prop{nullptr};  // a .grad read through a subclass's property
        if (from_params && THPVariable_Check(o.p) && grad_overridden(o.p)) {
            prop.p = PyObject_GetAttrString(o.p, "grad");
            if (!prop.p)
                return nullptr;
        }
        PyObject *holder = prop.p ? prop.p : o.p;
        if (THPVariable_Check(holder)) {
            const at::Tensor &v = THPVariable_Unpack(holder);
            const at::Tensor &t = from_params && !prop.p ? v.grad() : v;
            if (t.defined() && !t.is_inference()) {
                try {
                    t.unsafeGetTensorImpl()->bump_version();
                } catch (const c10::Error &) {
                    // a tensor without a version counter of its own
                }
            }
        }
    }
    if (PyErr_Occurred())
        return nullptr;
    Py_RETURN_NONE;
    END_HANDLE_TH_ERRORS
}

// release() -> None: drops what the last scan of this thread holds.
PyObject *release(PyObject *, PyObject *)
{
    held.clear();
    Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(items, from_params, ptr_address, capacity) -> (count, signature, flags, device)"},
    {"release", release, METH_NOARGS,
     "release() -> None: the gradients held since this thread's last scan are let go"},
    {"bump_versions", bump_versions, METH_VARARGS,
     "bump_versions(items, from_params) -> None: autograd version counters incremented"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_torch_fast", nullptr, -1, methods,
                      nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__torch_fast(void)
{
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return nullptr;
    PyModule_AddIntConstant(m, "DENSE", kDense);
    PyModule_AddIntConstant(m, "ONE_DEVICE", kOneDevice);
    PyModule_AddIntConstant(m, "ALL_F32", kAllF32);
    PyModule_AddIntConstant(m, "FAST_DTYPES", kFastDtypes);
    PyModule_AddIntConstant(m, "NO_INFERENCE", kNoInference);
    // the PyTorch whose headers it was built with: its inlined tensor
    // accessors read that version's layouts
    PyModule_AddStringConstant(m, "TORCH_VERSION", GCLIP_TORCH_VERSION);
    return m;
}
