# Per-file instruction-set flags, chosen by file name, so that run-time
# dispatch can pick a path the CPU actually has:
#   *_avx2.c    AVX2 + FMA + F16C
#   *_avx512.c  AVX-512 F/BW/VL/DQ + AVX512_BF16 + FMA + F16C
#   *_f16c.c    F16C only (SSE/AVX conversions)
# Other files are built for the baseline (x86-64 or the host's default).
function(mb_simd_sources target)
  get_target_property(srcs ${target} SOURCES)
  get_target_property(dir ${target} SOURCE_DIR)
  if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64")
    return()
  endif()
  foreach(s IN LISTS srcs)
    if(s MATCHES "_avx512\\.c$")
      set_property(SOURCE ${s} DIRECTORY ${dir} APPEND PROPERTY COMPILE_OPTIONS
        -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mfma -mf16c -mavx2)
    elseif(s MATCHES "_avx2\\.c$")
      set_property(SOURCE ${s} DIRECTORY ${dir} APPEND PROPERTY COMPILE_OPTIONS -mavx2 -mfma -mf16c)
    elseif(s MATCHES "_f16c\\.c$")
      set_property(SOURCE ${s} DIRECTORY ${dir} APPEND PROPERTY COMPILE_OPTIONS -mavx -mf16c)
    endif()
  endforeach()
endfunction()

# Folder library: every .c file directly in the folder (and in the listed
# sub-folders) is one library target; the public header sits at the folder root.
function(mb_folder_library target)
  cmake_parse_arguments(A "" "" "SUBDIRS;LIBS" ${ARGN})
  file(GLOB srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*.c)
  foreach(d IN LISTS A_SUBDIRS)
    file(GLOB more CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/${d}/*.c)
    list(APPEND srcs ${more})
  endforeach()
  list(FILTER srcs EXCLUDE REGEX "_main\\.c$")
  add_library(${target} STATIC ${srcs})
  target_include_directories(${target} PUBLIC ${CMAKE_SOURCE_DIR})
  target_link_libraries(${target} PUBLIC ${A_LIBS})
  mb_simd_sources(${target})
endfunction()
