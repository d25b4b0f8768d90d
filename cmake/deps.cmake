# Third-party dependencies, all from Debian packages.
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
pkg_check_modules(ZMQ REQUIRED IMPORTED_TARGET libzmq)
pkg_check_modules(CJSON REQUIRED IMPORTED_TARGET libcjson)
# The tokenizer: PCRE2 (Unicode properties, JIT) for pre-tokenizer regexes,
# utf8proc for the Unicode normal forms its normalizers ask for.
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(UTF8PROC REQUIRED IMPORTED_TARGET libutf8proc)
# The server (broker/serve/): GNU libmicrohttpd for HTTP.
pkg_check_modules(MHD REQUIRED IMPORTED_TARGET libmicrohttpd)
find_library(NUMA_LIBRARY numa REQUIRED)
find_path(NUMA_INCLUDE_DIR numa.h REQUIRED)
add_library(mb_numa INTERFACE)
target_link_libraries(mb_numa INTERFACE ${NUMA_LIBRARY})
target_include_directories(mb_numa INTERFACE ${NUMA_INCLUDE_DIR})

set(MB_HAVE_CUDA OFF)
if(MB_WITH_CUDA)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(MB_HAVE_CUDA ON)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES "90-real;90-virtual")
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    message(STATUS "moe-broker: CUDA backend ON (${CMAKE_CUDA_COMPILER})")
  else()
    message(STATUS "moe-broker: CUDA backend OFF: nvcc not found (set CMAKE_CUDA_COMPILER or PATH)")
  endif()
else()
  message(STATUS "moe-broker: CUDA backend OFF (MB_WITH_CUDA=OFF)")
endif()

set(MB_HAVE_VULKAN OFF)
if(MB_WITH_VULKAN)
  find_package(Vulkan QUIET)
  find_program(GLSLC glslc)
  if(Vulkan_FOUND AND GLSLC)
    set(MB_HAVE_VULKAN ON)
    message(STATUS "moe-broker: Vulkan backend ON (glslc: ${GLSLC})")
    # The VK_NV_cooperative_matrix2 GEMM (kernels/vulkan/cm2/) needs a
    # glslang newer than Debian 12's (GL_NV_cooperative_matrix2, glslang 14
    # and up) and Vulkan headers that name the extension: MB_GLSLANG names
    # such a glslang (bench/gpu/make-devkit.sh builds one); it is used when
    # it compiles the shader, else the GEMM is left out (the backend then
    # reports "built without cooperative_matrix2").
    set(MB_GLSLANG "" CACHE FILEPATH "glslang with GL_NV_cooperative_matrix2, for kernels/vulkan/cm2")
    set(MB_HAVE_VK_CM2 OFF)
    if(MB_GLSLANG)
      execute_process(COMMAND ${MB_GLSLANG} -V --target-env vulkan1.3
                              -o ${CMAKE_BINARY_DIR}/cm2_probe.spv
                              ${CMAKE_SOURCE_DIR}/kernels/vulkan/cm2/moe_gemm_cm2.comp
                      RESULT_VARIABLE cm2_rc OUTPUT_VARIABLE cm2_out ERROR_VARIABLE cm2_out)
      include(CheckSymbolExists)
      unset(MB_VK_HEADERS_CM2 CACHE) # checked again at every configure: Vulkan_INCLUDE_DIR may change
      set(CMAKE_REQUIRED_INCLUDES ${Vulkan_INCLUDE_DIRS})
      check_symbol_exists(VK_NV_cooperative_matrix2 "vulkan/vulkan.h" MB_VK_HEADERS_CM2)
      unset(CMAKE_REQUIRED_INCLUDES)
      if(cm2_rc EQUAL 0 AND MB_VK_HEADERS_CM2)
        set(MB_HAVE_VK_CM2 ON)
        message(STATUS "moe-broker: Vulkan cooperative_matrix2 GEMM ON (${MB_GLSLANG})")
        # Its bf16-matrix form needs GL_EXT_bfloat16 too (glslang 15 and up).
        execute_process(COMMAND ${MB_GLSLANG} -V --target-env vulkan1.3
                                -o ${CMAKE_BINARY_DIR}/cm2_bf16_probe.spv
                                ${CMAKE_SOURCE_DIR}/kernels/vulkan/cm2/moe_gemm_cm2_bf16.comp
                        RESULT_VARIABLE cm2_bf16_rc OUTPUT_QUIET ERROR_QUIET)
        set(MB_HAVE_VK_CM2_BF16 OFF)
        if(cm2_bf16_rc EQUAL 0)
          set(MB_HAVE_VK_CM2_BF16 ON)
        endif()
        message(STATUS "moe-broker: Vulkan cooperative_matrix2 bf16 GEMM ${MB_HAVE_VK_CM2_BF16}")
      else()
        message(STATUS "moe-broker: Vulkan cooperative_matrix2 GEMM OFF: ${MB_GLSLANG} rc ${cm2_rc}, "
                       "headers name VK_NV_cooperative_matrix2: ${MB_VK_HEADERS_CM2}")
      endif()
    endif()
  else()
    message(STATUS "moe-broker: Vulkan backend OFF: need the Vulkan loader headers and glslc (libvulkan-dev, glslc)")
  endif()
else()
  message(STATUS "moe-broker: Vulkan backend OFF (MB_WITH_VULKAN=OFF)")
endif()

# Compile GLSL compute shaders to SPIR-V at build time. A shader may
# #include the .glsl files beside it; each depends on all of them.
function(mb_spirv out_var)
  set(outs)
  foreach(src IN LISTS ARGN)
    get_filename_component(name ${src} NAME_WE)
    get_filename_component(dir ${src} DIRECTORY)
    file(GLOB incs CONFIGURE_DEPENDS ${dir}/*.glsl)
    set(spv ${CMAKE_CURRENT_BINARY_DIR}/${name}.spv)
    add_custom_command(OUTPUT ${spv}
      COMMAND ${GLSLC} --target-env=vulkan1.2 -O -o ${spv} ${src}
      DEPENDS ${src} ${incs} COMMENT "glslc ${name}")
    list(APPEND outs ${spv})
  endforeach()
  set(${out_var} ${outs} PARENT_SCOPE)
endfunction()

# The same with MB_GLSLANG (shaders that Debian 12's glslc cannot compile).
function(mb_spirv_glslang out_var)
  set(outs)
  foreach(src IN LISTS ARGN)
    get_filename_component(name ${src} NAME_WE)
    get_filename_component(dir ${src} DIRECTORY)
    file(GLOB incs CONFIGURE_DEPENDS ${dir}/*.glsl ${dir}/../*.glsl)
    set(spv ${CMAKE_CURRENT_BINARY_DIR}/${name}.spv)
    add_custom_command(OUTPUT ${spv}
      COMMAND ${MB_GLSLANG} -V --target-env vulkan1.3 --quiet -o ${spv} ${src}
      DEPENDS ${src} ${incs} COMMENT "glslang ${name}")
    list(APPEND outs ${spv})
  endforeach()
  set(${out_var} ${outs} PARENT_SCOPE)
endfunction()
