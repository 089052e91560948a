// Makes the compiled library importable as `rtda_kernels._C`. Importing it loads the shared
// library, whose static TORCH_LIBRARY_IMPL initialisers register the kernels of the ops that
// rtda_kernels/schemas.py defines; the module itself is empty.
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C",
                               "Compiled rtda_kernels ops (registered with torch.library).", -1,
                               nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
