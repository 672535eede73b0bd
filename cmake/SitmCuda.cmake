# Optional CUDA for sitm-trt.
#   SITM_WITH_CUDA=AUTO (default): build the CUDA kernels when a CUDA compiler is found, else CPU only.
#   SITM_WITH_CUDA=ON: require CUDA (fatal error with a hint when nvcc is missing).  OFF: CPU only.
#   CMAKE_CUDA_ARCHITECTURES is respected; the default (SitmCudaArchs.cmake) is machine code for sm_80, 86, 89,
#   90, 100, 120 plus PTX for sm_120 so newer GPUs can JIT, and without sm_100/sm_120 for an nvcc older than
#   12.8 (which does not know them) instead of a failing build.
# Sets SITM_CUDA_ENABLED, SITM_CUDA_ARCHS, and report strings for build_info().
include(CheckLanguage)
include(${CMAKE_CURRENT_LIST_DIR}/SitmCudaArchs.cmake)

set(SITM_WITH_CUDA "AUTO" CACHE STRING "Build the CUDA kernels: AUTO, ON or OFF")
set_property(CACHE SITM_WITH_CUDA PROPERTY STRINGS AUTO ON OFF)
string(TOUPPER "${SITM_WITH_CUDA}" _sitm_with_cuda)

set(SITM_CUDA_ENABLED OFF)
if(_sitm_with_cuda STREQUAL "OFF" OR _sitm_with_cuda STREQUAL "0" OR _sitm_with_cuda STREQUAL "FALSE")
  message(STATUS "sitm-trt: CUDA disabled (SITM_WITH_CUDA=${SITM_WITH_CUDA})")
elseif(_sitm_with_cuda STREQUAL "ON" OR _sitm_with_cuda STREQUAL "1" OR _sitm_with_cuda STREQUAL "TRUE"
       OR _sitm_with_cuda STREQUAL "AUTO")
  if(NOT CMAKE_CUDA_COMPILER)
    check_language(CUDA)
  endif()
  if(CMAKE_CUDA_COMPILER)
    set(SITM_CUDA_ENABLED ON)
  elseif(NOT _sitm_with_cuda STREQUAL "AUTO")
    message(FATAL_ERROR "sitm-trt: SITM_WITH_CUDA=${SITM_WITH_CUDA} but no CUDA compiler was found. Put nvcc on "
                        "PATH (or set CUDACXX=/path/to/nvcc), or build CPU-only with SITM_WITH_CUDA=OFF.")
  else()
    message(STATUS "sitm-trt: no CUDA compiler found, building the CPU kernels only")
  endif()
else()
  message(FATAL_ERROR "sitm-trt: SITM_WITH_CUDA must be AUTO, ON or OFF, got '${SITM_WITH_CUDA}'")
endif()

if(SITM_CUDA_ENABLED)
  # The default list depends on the nvcc version, known only once the language is enabled (the compiler
  # check then uses nvcc's own default architecture, which it always supports).
  set(_sitm_user_archs "")
  if(DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT CMAKE_CUDA_ARCHITECTURES STREQUAL "")
    set(_sitm_user_archs "${CMAKE_CUDA_ARCHITECTURES}")
  endif()
  enable_language(CUDA)
  if(_sitm_user_archs STREQUAL "")
    sitm_default_cuda_archs("${CMAKE_CUDA_COMPILER_VERSION}" _sitm_archs)
    set(CMAKE_CUDA_ARCHITECTURES "${_sitm_archs}")
  endif()
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  set(SITM_CUDA_ARCHS "${CMAKE_CUDA_ARCHITECTURES}")
  set(SITM_CUDA_ARCHS_REPORT "${CMAKE_CUDA_ARCHITECTURES}")
  set(SITM_CUDA_COMPILER_REPORT "${CMAKE_CUDA_COMPILER_ID} ${CMAKE_CUDA_COMPILER_VERSION}")
  message(STATUS "sitm-trt: CUDA kernels ON for architectures ${CMAKE_CUDA_ARCHITECTURES}")
else()
  set(SITM_CUDA_ARCHS "")
  set(SITM_CUDA_ARCHS_REPORT "")
  set(SITM_CUDA_COMPILER_REPORT "")
endif()
