# strata_add_test(NAME SOURCES a_test.cc ... [LABELS l ...] [TIMEOUT s])
# One test program per *_test.cc group, one CTest entry per program.
set(STRATA_REGISTERED_TESTS "" CACHE INTERNAL "")
# The tests' scratch root (STRATA_TEST_TMPDIR): made at configure time, so that a test run on
# its own (ctest -R) in a fresh build finds it.
file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/test-tmp)
function(strata_add_test name)
  cmake_parse_arguments(T "" "TIMEOUT" "SOURCES;LABELS;LIBS" ${ARGN})
  if(NOT STRATA_BUILD_TESTS)
    return()
  endif()
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE strata GTest::gtest GTest::gtest_main Threads::Threads ${T_LIBS})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR})
  strata_set_warnings(${name})
  add_test(NAME ${name} COMMAND ${name})
  set(timeout 600)
  if(T_TIMEOUT)
    set(timeout ${T_TIMEOUT})
  endif()
  set_tests_properties(${name} PROPERTIES TIMEOUT ${timeout} LABELS "unit;${T_LABELS}"
    ENVIRONMENT "STRATA_TEST_TMPDIR=${CMAKE_BINARY_DIR}/test-tmp")
  foreach(src ${T_SOURCES})
    get_filename_component(n ${src} NAME_WE)
    set(STRATA_REGISTERED_TESTS "${STRATA_REGISTERED_TESTS};${n}" CACHE INTERNAL "")
  endforeach()
endfunction()

# Fails (as a CTest entry) when a *_test.cc in the tree is not registered.
function(strata_check_registered_tests)
  add_test(NAME tests_registered
    COMMAND ${CMAKE_COMMAND} -DSOURCE_DIR=${PROJECT_SOURCE_DIR} "-DREGISTERED=${STRATA_REGISTERED_TESTS}"
            -DWITH_BENCH=${STRATA_BUILD_BENCH}
            -P ${PROJECT_SOURCE_DIR}/cmake/CheckTestsRegistered.cmake)
  set_tests_properties(tests_registered PROPERTIES LABELS "meta")
endfunction()

# Installs strata into a scratch prefix and builds examples/consumer against it.
function(strata_consumer_test)
  if(STRATA_SANITIZE)
    return()
  endif()
  add_test(NAME install_consumer
    COMMAND ${CMAKE_COMMAND} -DBUILD_DIR=${CMAKE_BINARY_DIR} -DSOURCE_DIR=${PROJECT_SOURCE_DIR}
            -P ${PROJECT_SOURCE_DIR}/cmake/ConsumerTest.cmake)
  set_tests_properties(install_consumer PROPERTIES LABELS "meta" TIMEOUT 600)
endfunction()
