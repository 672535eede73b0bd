# Which CUDA architectures sitm-trt builds for, and whether SITM_WITH_CUDA=AUTO builds the CUDA kernels at all
# (used by SitmCuda.cmake). Every function also runs in script mode, without a compiler, for the tests
# (tests/test_streams.py, tests/test_build.py):
#   cmake -DSITM_NVCC_VERSION=12.4 -P cmake/SitmCudaArchs.cmake
#       the default list (SITM_WITH_CUDA=ON) for that nvcc version
#   cmake -DSITM_GPU_CAPS="9.0;8.6" [-DSITM_NVCC_ARCHS="75;80;86;90"] -P cmake/SitmCudaArchs.cmake
#       the list AUTO builds for GPUs of those compute capabilities with an nvcc that knows those architectures
#   cmake -DSITM_PLAN=AUTO [-DSITM_USER_ARCHS=90-real] [-DSITM_NVIDIA_SMI=/path/to/nvidia-smi] -P ...
#       what a configure decides before it looks for nvcc: "<want>|<compute capabilities>|<why>"

cmake_policy(VERSION 3.24)  # the project's minimum; script mode (-P) starts with none

# The oldest architecture built without being asked for by name: the default list's first one.
set(SITM_CUDA_OLDEST_ARCH 80)

# The default list (SITM_WITH_CUDA=ON without CMAKE_CUDA_ARCHITECTURES) for an nvcc version:
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

# The compute capabilities ("9.0", "8.6"; each once) of the GPUs that nvidia-smi reports, and a note for the build log
# saying what was found or why nothing was. Runs ${SITM_NVIDIA_SMI} when set, else nvidia-smi from PATH.
# No compiler, no CUDA runtime: a machine without a GPU answers in milliseconds.
function(sitm_detect_gpu_caps caps_var note_var)
  if(NOT SITM_NVIDIA_SMI)
    find_program(SITM_NVIDIA_SMI nvidia-smi)
  endif()
  set(caps "")
  if(NOT SITM_NVIDIA_SMI)
    set(note "nvidia-smi not found")
  else()
    execute_process(COMMAND "${SITM_NVIDIA_SMI}" --query-gpu=compute_cap --format=csv,noheader
                    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 30)
    if(NOT rc STREQUAL "0")
      string(STRIP "${out}${err}" first_line)
      string(REGEX REPLACE "\n.*" "" first_line "${first_line}")
      set(note "${SITM_NVIDIA_SMI} failed (${rc})")
      if(first_line)
        string(APPEND note ": ${first_line}")
      endif()
    else()
      string(REPLACE "\n" ";" lines "${out}")
      foreach(line IN LISTS lines)
        string(STRIP "${line}" line)
        if(line MATCHES "^[0-9]+\\.[0-9]+$")
          list(APPEND caps "${line}")
        endif()
      endforeach()
      list(REMOVE_DUPLICATES caps)
      if(caps)
        string(REPLACE ";" ", " shown "${caps}")
        set(note "nvidia-smi: compute capability ${shown}")
      else()
        set(note "nvidia-smi lists no GPU")
      endif()
    endif()
  endif()
  set(${caps_var} "${caps}" PARENT_SCOPE)
  set(${note_var} "${note}" PARENT_SCOPE)
endfunction()

# The architectures AUTO builds for local GPUs of compute capabilities `caps` ("9.0;8.6;9.0"): machine code for
# each one nvcc knows (`nvcc_archs`, the numbers of `nvcc --list-gpu-code`; empty: assume it knows them all);
# for a GPU newer than nvcc, PTX of the newest architecture nvcc knows below it, which the driver compiles at
# first use; none for GPUs older than SITM_CUDA_OLDEST_ARCH. Sorted, each once; empty when no GPU qualifies.
function(sitm_local_cuda_archs caps nvcc_archs out_var)
  set(known "${nvcc_archs}")
  list(SORT known COMPARE NATURAL)
  set(archs "")
  foreach(cap IN LISTS caps)
    string(REPLACE "." "" sm "${cap}")
    if(sm LESS SITM_CUDA_OLDEST_ARCH)
      continue()
    endif()
    if(NOT known OR sm IN_LIST known)
      list(APPEND archs "${sm}-real")
    else()
      set(below "")
      foreach(k IN LISTS known)
        if(NOT k GREATER sm AND NOT k LESS SITM_CUDA_OLDEST_ARCH)
          set(below "${k}")
        endif()
      endforeach()
      if(below)
        list(APPEND archs "${below}-virtual")
      endif()
    endif()
  endforeach()
  list(REMOVE_DUPLICATES archs)
  list(SORT archs COMPARE NATURAL)
  set(${out_var} "${archs}" PARENT_SCOPE)
endfunction()

# What a configure with SITM_WITH_CUDA=`mode` (OFF, ON or AUTO) decides before it looks for a CUDA compiler:
#   want_var: OFF (CPU kernels only), REQUIRED (ON: a missing nvcc is a fatal error) or IF_FOUND (build CUDA
#             when nvcc is found, else CPU only).
#   caps_var: for AUTO, the local GPUs' compute capabilities to build for (sitm_local_cuda_archs); empty when
#             `user_archs` (CMAKE_CUDA_ARCHITECTURES) or, for ON, the default list decides.
#   why_var:  a sentence for the build log.
# AUTO builds CUDA only when asked for architectures by name or when nvidia-smi reports a GPU of
# SITM_CUDA_OLDEST_ARCH or newer: a machine with nvcc but no GPU gets the CPU build (seconds, not minutes).
function(sitm_cuda_plan mode user_archs want_var caps_var why_var)
  set(caps "")
  if(mode STREQUAL "OFF")
    set(want OFF)
    set(why "SITM_WITH_CUDA=OFF")
  elseif(mode STREQUAL "ON")
    set(want REQUIRED)
    if(user_archs)
      set(why "SITM_WITH_CUDA=ON, CMAKE_CUDA_ARCHITECTURES=${user_archs}")
    else()
      set(why "SITM_WITH_CUDA=ON: every supported architecture")
    endif()
  elseif(user_archs)
    set(want IF_FOUND)
    set(why "SITM_WITH_CUDA=AUTO, CMAKE_CUDA_ARCHITECTURES=${user_archs}")
  else()
    sitm_detect_gpu_caps(found note)
    sitm_local_cuda_archs("${found}" "" usable)
    if(usable)
      set(want IF_FOUND)
      set(caps "${found}")
      string(CONCAT why "SITM_WITH_CUDA=AUTO: for this machine's GPU only (${note}); SITM_WITH_CUDA=ON builds "
                        "for every supported GPU")
    else()
      set(want OFF)
      if(found)
        set(note "${note}, older than sm_${SITM_CUDA_OLDEST_ARCH}, the oldest built unless named")
      endif()
      string(CONCAT why "SITM_WITH_CUDA=AUTO and no GPU to build for (${note}); SITM_WITH_CUDA=ON builds the CUDA "
                        "kernels for every supported GPU, CMAKE_ARGS=-DCMAKE_CUDA_ARCHITECTURES=90-real for one")
    endif()
  endif()
  set(${want_var} "${want}" PARENT_SCOPE)
  set(${caps_var} "${caps}" PARENT_SCOPE)
  set(${why_var} "${why}" PARENT_SCOPE)
endfunction()

if(CMAKE_SCRIPT_MODE_FILE AND CMAKE_SCRIPT_MODE_FILE STREQUAL CMAKE_CURRENT_LIST_FILE)
  if(DEFINED SITM_NVCC_VERSION)
    sitm_default_cuda_archs("${SITM_NVCC_VERSION}" _archs)
    message("${_archs}")
  elseif(DEFINED SITM_GPU_CAPS)
    sitm_local_cuda_archs("${SITM_GPU_CAPS}" "${SITM_NVCC_ARCHS}" _archs)
    message("${_archs}")
  elseif(DEFINED SITM_PLAN)
    sitm_cuda_plan("${SITM_PLAN}" "${SITM_USER_ARCHS}" _want _caps _why)
    message("${_want}|${_caps}|${_why}")
  else()
    message(FATAL_ERROR "usage: cmake -DSITM_NVCC_VERSION=12.4 -P SitmCudaArchs.cmake (or SITM_GPU_CAPS, "
                        "SITM_PLAN: see the top of the file)")
  endif()
endif()
