# The CUDA side of the build, included by CMakeLists.txt when the installed torch has CUDA.
#
#   rtda_find_cuda_toolkit()   -> RTDA_CUDA_ROOT: $CUDA_HOME / $CUDA_PATH, else where the nvcc on
#                                 PATH really lives (wrappers followed: nvcc -dryrun names its own
#                                 folder), else /usr/local/cuda, /usr/local/cuda-*, /opt/cuda
#   rtda_cuda_libraries(dirs)  -> CUDA_<lib>_LIBRARY for each library torch links that the toolkit
#                                 lacks, taken from torch's own nvidia wheels (site-packages/nvidia)
#   rtda_cuda_arch_list()      -> TORCH_CUDA_ARCH_LIST by nvcc version, unless the user set one
#
# RTDA_WITH_CUDA=REQUIRED turns "cannot build the CUDA kernels" into an error; AUTO (the default)
# and ON build the CPU kernels only and say why.

function(rtda_cuda_missing what fix)
  if(RTDA_WITH_CUDA STREQUAL "REQUIRED")
    message(FATAL_ERROR "rtda_kernels: ${what}. ${fix}")
  endif()
  message(WARNING "rtda_kernels: ${what}; building the CPU kernels only. ${fix} "
                  "(-DRTDA_WITH_CUDA=REQUIRED makes this an error, OFF silences it.)")
  set(RTDA_CUDA_UNAVAILABLE ON PARENT_SCOPE)
endfunction()

function(_rtda_nvcc_root nvcc out)
  execute_process(COMMAND "${nvcc}" -dryrun -E -x cu /dev/null
                  OUTPUT_VARIABLE _o ERROR_VARIABLE _e RESULT_VARIABLE _rc)
  set(${out} "" PARENT_SCOPE)
  if(_rc EQUAL 0 AND "${_o}${_e}" MATCHES "_HERE_=([^\r\n]*)")
    get_filename_component(_root "${CMAKE_MATCH_1}/.." REALPATH)
    if(EXISTS "${_root}/bin/nvcc")
      set(${out} "${_root}" PARENT_SCOPE)
    endif()
  endif()
endfunction()

function(rtda_find_cuda_toolkit)
  set(_root "")
  foreach(_var CUDA_HOME CUDA_PATH)
    if(NOT _root AND NOT "$ENV{${_var}}" STREQUAL "")
      if(NOT EXISTS "$ENV{${_var}}/bin/nvcc")
        message(FATAL_ERROR "rtda_kernels: ${_var}=$ENV{${_var}} has no bin/nvcc. Point ${_var} "
                            "at the CUDA toolkit's root folder (the one holding bin/nvcc), or unset it.")
      endif()
      get_filename_component(_root "$ENV{${_var}}" REALPATH)
      set(_how "${_var}")
    endif()
  endforeach()
  if(NOT _root)
    find_program(RTDA_NVCC_ON_PATH nvcc)
    if(RTDA_NVCC_ON_PATH)
      _rtda_nvcc_root("${RTDA_NVCC_ON_PATH}" _root)
      set(_how "nvcc on PATH (${RTDA_NVCC_ON_PATH})")
    endif()
  endif()
  if(NOT _root)
    file(GLOB _versioned LIST_DIRECTORIES true /usr/local/cuda-*)
    list(SORT _versioned COMPARE NATURAL ORDER DESCENDING)
    foreach(_dir /usr/local/cuda ${_versioned} /opt/cuda)
      if(NOT _root AND EXISTS "${_dir}/bin/nvcc")
        get_filename_component(_root "${_dir}" REALPATH)
        set(_how "standard path ${_dir}")
      endif()
    endforeach()
  endif()
  if(_root)
    message(STATUS "rtda_kernels: CUDA toolkit ${_root} (from ${_how})")
  endif()
  set(RTDA_CUDA_ROOT "${_root}" PARENT_SCOPE)
endfunction()

# Libraries torch's CMake config asks FindCUDAToolkit for, by CUDA_<name>_LIBRARY.
set(RTDA_CUDA_LIBRARIES nvrtc cudart cublas cublasLt cufft curand cusolver cusparse nvJitLink cupti)

function(rtda_cuda_libraries toolkit_root wheel_dirs)
  foreach(_lib IN LISTS RTDA_CUDA_LIBRARIES)
    if(CUDA_${_lib}_LIBRARY)
      continue()  # set by the user or found before
    endif()
    file(GLOB _in_toolkit "${toolkit_root}/lib64/lib${_lib}.so*"
                          "${toolkit_root}/targets/*/lib/lib${_lib}.so*")
    if(_in_toolkit)
      continue()  # FindCUDAToolkit finds it
    endif()
    set(_found "")
    foreach(_dir IN LISTS wheel_dirs)
      file(GLOB _candidates "${_dir}/lib${_lib}.so*")
      list(FILTER _candidates EXCLUDE REGEX "\\.alt\\.so|builtins")
      list(SORT _candidates)
      if(_candidates AND NOT _found)
        list(GET _candidates 0 _found)
      endif()
    endforeach()
    if(_found)
      set(CUDA_${_lib}_LIBRARY "${_found}" CACHE FILEPATH "lib${_lib} (from torch's nvidia wheels)")
      message(STATUS "rtda_kernels: lib${_lib} from torch's nvidia wheels: ${_found}")
    elseif(_lib STREQUAL "nvrtc" OR _lib STREQUAL "cudart")
      rtda_cuda_missing("lib${_lib} is neither in the CUDA toolkit (${toolkit_root}) nor in torch's nvidia wheels"
                        "Install the toolkit's ${_lib} package, or pass -DCUDA_${_lib}_LIBRARY=/path/to/lib${_lib}.so.")
      set(RTDA_CUDA_UNAVAILABLE "${RTDA_CUDA_UNAVAILABLE}" PARENT_SCOPE)
      return()
    endif()
  endforeach()
endfunction()

# Real architectures by nvcc version, the newest also as PTX (forward compatible). CUDA 13 dropped
# sm_70 (V100) and sm_72 (Xavier); the Triton kernels still compile for them.
function(rtda_cuda_arch_list nvcc_version)
  if(DEFINED RTDA_CUDA_ARCH_LIST AND NOT RTDA_CUDA_ARCH_LIST STREQUAL "")
    set(_list "${RTDA_CUDA_ARCH_LIST}")
    set(_how "RTDA_CUDA_ARCH_LIST")
  elseif(DEFINED TORCH_CUDA_ARCH_LIST AND NOT TORCH_CUDA_ARCH_LIST STREQUAL "")
    set(_list "${TORCH_CUDA_ARCH_LIST}")
    set(_how "TORCH_CUDA_ARCH_LIST")
  elseif(NOT "$ENV{TORCH_CUDA_ARCH_LIST}" STREQUAL "")
    set(_list "$ENV{TORCH_CUDA_ARCH_LIST}")
    set(_how "environment TORCH_CUDA_ARCH_LIST")
  elseif(nvcc_version VERSION_GREATER_EQUAL 13.0)
    set(_list "7.5;8.0;8.6;8.7;8.9;9.0+PTX")
    set(_how "nvcc ${nvcc_version}; sm_70/sm_72 need CUDA 12")
  elseif(nvcc_version VERSION_GREATER_EQUAL 12.0)
    set(_list "7.0;7.2;7.5;8.0;8.6;8.7;8.9;9.0+PTX")
    set(_how "nvcc ${nvcc_version}")
  else()
    rtda_cuda_missing("nvcc ${nvcc_version} is too old (torch needs CUDA 12 or newer)"
                      "Install CUDA 12 or 13 and point CUDA_HOME at it.")
    set(RTDA_CUDA_UNAVAILABLE "${RTDA_CUDA_UNAVAILABLE}" PARENT_SCOPE)
    return()
  endif()
  string(REPLACE " " ";" _list "${_list}")
  set(TORCH_CUDA_ARCH_LIST "${_list}" PARENT_SCOPE)
  message(STATUS "rtda_kernels: CUDA architectures ${_list} (${_how})")
endfunction()
