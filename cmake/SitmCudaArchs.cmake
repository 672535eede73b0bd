# The default CUDA architecture list for an nvcc version (used by SitmCuda.cmake; tested by
# tests/test_streams.py through `cmake -DSITM_NVCC_VERSION=X.Y -P cmake/SitmCudaArchs.cmake`).
#   nvcc >= 12.8: machine code for sm_80, 86, 89, 90, 100, 120 and PTX for sm_120 (newer GPUs JIT it).
#   nvcc <  12.8: sm_100/sm_120 are unknown to it: machine code for sm_80, 86, 89, 90 and PTX for sm_90
#                 (Blackwell then JITs the sm_90 PTX) instead of a failing build.
#   nvcc <  11.8: sm_89/sm_90 are unknown too: sm_80, 86 and PTX for sm_86.
function(sitm_default_cuda_archs nvcc_version out_var)
  if(nvcc_version VERSION_GREATER_EQUAL 12.8)
    set(archs "80-real;86-real;89-real;90-real;100-real;120-real;120-virtual")
  elseif(nvcc_version VERSION_GREATER_EQUAL 11.8)
    set(archs "80-real;86-real;89-real;90-real;90-virtual")
  else()
    set(archs "80-real;86-real;86-virtual")
  endif()
  set(${out_var} "${archs}" PARENT_SCOPE)
endfunction()

if(CMAKE_SCRIPT_MODE_FILE AND CMAKE_SCRIPT_MODE_FILE STREQUAL CMAKE_CURRENT_LIST_FILE)
  if(NOT DEFINED SITM_NVCC_VERSION)
    message(FATAL_ERROR "usage: cmake -DSITM_NVCC_VERSION=12.4 -P SitmCudaArchs.cmake")
  endif()
  sitm_default_cuda_archs("${SITM_NVCC_VERSION}" _archs)
  message("${_archs}")
endif()
