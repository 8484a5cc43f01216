# Runs both refusals of an old LibTorch and fails unless each stops with a message naming the version:
#   cmake -DSOURCE_DIR=<repo> -DWORK_DIR=<dir> -DCXX=<compiler> -P check_old_torch.cmake
file(REMOVE_RECURSE "${WORK_DIR}")
execute_process(
  COMMAND ${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${WORK_DIR}/build" -DTorch_DIR=${SOURCE_DIR}/tests/cmake/fake_torch_2_0
          -DLTXMPS_BUILD_TESTS=OFF -DLTXMPS_BUILD_BENCHMARKS=OFF -DLTXMPS_BUILD_EXAMPLES=OFF
          -DLTXMPS_BUILD_DOCS=OFF -DLTXMPS_BUILD_PIPELINE=OFF
  RESULT_VARIABLE configure_result OUTPUT_VARIABLE configure_out ERROR_VARIABLE configure_err)
if(configure_result EQUAL 0)
  message(FATAL_ERROR "configuring against LibTorch 2.0 succeeded; it must fail")
endif()
string(REGEX REPLACE "[ \t\r\n]+" " " configure_err "${configure_err}")  # CMake wraps messages
if(NOT configure_err MATCHES "requires LibTorch >= 2.1, but the LibTorch found at .* is version 2.0.1")
  message(FATAL_ERROR "configure failed without naming the version found:\n${configure_err}")
endif()
execute_process(
  COMMAND ${CXX} -std=c++17 -fsyntax-only -I${SOURCE_DIR}/tests/cmake/old_torch -I${SOURCE_DIR}/include
          ${SOURCE_DIR}/tests/cmake/old_torch/include_version.cpp
  RESULT_VARIABLE compile_result OUTPUT_VARIABLE compile_out ERROR_VARIABLE compile_err)
if(compile_result EQUAL 0)
  message(FATAL_ERROR "ltxmps/version.hpp compiled against LibTorch 2.0 headers; it must refuse them")
endif()
if(NOT compile_err MATCHES "ltxmps requires LibTorch >= 2.1")
  message(FATAL_ERROR "the compile error does not say why:\n${compile_err}")
endif()
message(STATUS "LibTorch 2.0 refused at configure time and at compile time, with the version named")
