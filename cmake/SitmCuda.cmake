# Optional CUDA for sitm-trt (the rules live in SitmCudaArchs.cmake, which the tests run in script mode).
#   SITM_WITH_CUDA=AUTO (default): build the CUDA kernels for this machine's GPU (nvidia-smi's compute
#     capability) when nvcc is found too; without a GPU, CPU only: nvcc on PATH alone no longer costs minutes.
#     Naming architectures (CMAKE_CUDA_ARCHITECTURES or the CUDAARCHS environment variable) builds for those
#     whenever nvcc is found, GPU or not.
#   SITM_WITH_CUDA=ON: require CUDA (fatal error with a hint when nvcc is missing), for CMAKE_CUDA_ARCHITECTURES
#     or else every supported GPU: machine code for sm_80, 86, 89, 90, 100, 120 plus PTX for sm_120 so newer
#     GPUs can JIT, without sm_100/sm_120 for an nvcc older than 12.8 (which does not know them).
#   SITM_WITH_CUDA=OFF: CPU only.
# The build log says which and why ("sitm-trt: CUDA kernels ON/OFF ..."; pip shows it with -v).
# Sets SITM_CUDA_ENABLED, SITM_CUDA_ARCHS, and report strings for build_info().
include(CheckLanguage)
include(${CMAKE_CURRENT_LIST_DIR}/SitmCudaArchs.cmake)

set(SITM_WITH_CUDA "AUTO" CACHE STRING "Build the CUDA kernels: AUTO, ON or OFF")
set_property(CACHE SITM_WITH_CUDA PROPERTY STRINGS AUTO ON OFF)
string(TOUPPER "${SITM_WITH_CUDA}" _sitm_mode)
if(_sitm_mode MATCHES "^(OFF|0|FALSE)$")
  set(_sitm_mode OFF)
elseif(_sitm_mode MATCHES "^(ON|1|TRUE)$")
  set(_sitm_mode ON)
elseif(NOT _sitm_mode STREQUAL "AUTO")
  message(FATAL_ERROR "sitm-trt: SITM_WITH_CUDA must be AUTO, ON or OFF, got '${SITM_WITH_CUDA}'")
endif()

# Architectures named by the user. enable_language(CUDA) caches its own default in CMAKE_CUDA_ARCHITECTURES,
# which a later configure of the same build folder must not take for the user's choice: it is remembered.
set(_sitm_user_archs "")
if(DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT CMAKE_CUDA_ARCHITECTURES STREQUAL ""
   AND NOT CMAKE_CUDA_ARCHITECTURES STREQUAL "${_SITM_CMAKE_DEFAULT_CUDA_ARCHS}")
  set(_sitm_user_archs "${CMAKE_CUDA_ARCHITECTURES}")
elseif(NOT "$ENV{CUDAARCHS}" STREQUAL "")
  set(_sitm_user_archs "$ENV{CUDAARCHS}")
endif()

sitm_cuda_plan("${_sitm_mode}" "${_sitm_user_archs}" _sitm_want _sitm_gpu_caps _sitm_why)
set(SITM_CUDA_ENABLED OFF)
if(NOT _sitm_want STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER)
    check_language(CUDA)
  endif()
  if(CMAKE_CUDA_COMPILER)
    set(SITM_CUDA_ENABLED ON)
  elseif(_sitm_want STREQUAL "REQUIRED")
    message(FATAL_ERROR "sitm-trt: SITM_WITH_CUDA=${SITM_WITH_CUDA} but no CUDA compiler was found. Put nvcc on "
                        "PATH (or set CUDACXX=/path/to/nvcc), or build CPU-only with SITM_WITH_CUDA=OFF.")
  else()
    string(CONCAT _sitm_why "SITM_WITH_CUDA=AUTO would build them, but no CUDA compiler was found: put nvcc on "
                            "PATH or set CUDACXX=/path/to/nvcc")
  endif()
endif()

if(SITM_CUDA_ENABLED)
  # Without named architectures the compiler check runs with nvcc's own default one, which it always supports;
  # the list is chosen once the nvcc version and the architectures it knows are known.
  enable_language(CUDA)
  if(NOT _sitm_user_archs STREQUAL "")
    set(CMAKE_CUDA_ARCHITECTURES "${_sitm_user_archs}")
  else()
    set(_SITM_CMAKE_DEFAULT_CUDA_ARCHS "${CMAKE_CUDA_ARCHITECTURES}" CACHE INTERNAL
        "what enable_language(CUDA) cached in CMAKE_CUDA_ARCHITECTURES: not the user's choice")
    set(_sitm_archs "")
    if(_sitm_gpu_caps)
      # an older nvcc without --list-gpu-code: the GPUs' own architectures are taken as known
      execute_process(COMMAND "${CMAKE_CUDA_COMPILER}" --list-gpu-code
                      RESULT_VARIABLE _sitm_rc OUTPUT_VARIABLE _sitm_codes ERROR_QUIET TIMEOUT 60)
      set(_sitm_nvcc_archs "")
      if(_sitm_rc STREQUAL "0")
        string(REGEX MATCHALL "sm_[0-9]+" _sitm_codes "${_sitm_codes}")
        string(REPLACE "sm_" "" _sitm_nvcc_archs "${_sitm_codes}")
      endif()
      sitm_local_cuda_archs("${_sitm_gpu_caps}" "${_sitm_nvcc_archs}" _sitm_archs)
    endif()
    if(NOT _sitm_archs)  # ON, or no architecture of the GPUs that this nvcc can target
      sitm_default_cuda_archs("${CMAKE_CUDA_COMPILER_VERSION}" _sitm_archs)
    endif()
    set(CMAKE_CUDA_ARCHITECTURES "${_sitm_archs}")
  endif()
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  set(SITM_CUDA_ARCHS "${CMAKE_CUDA_ARCHITECTURES}")
  set(SITM_CUDA_ARCHS_REPORT "${CMAKE_CUDA_ARCHITECTURES}")
  set(SITM_CUDA_COMPILER_REPORT "${CMAKE_CUDA_COMPILER_ID} ${CMAKE_CUDA_COMPILER_VERSION}")
  message(STATUS "sitm-trt: CUDA kernels ON for architectures ${CMAKE_CUDA_ARCHITECTURES} (${_sitm_why})")
else()
  set(SITM_CUDA_ARCHS "")
  set(SITM_CUDA_ARCHS_REPORT "")
  set(SITM_CUDA_COMPILER_REPORT "")
  message(STATUS "sitm-trt: CUDA kernels OFF, CPU kernels only (${_sitm_why})")
endif()
