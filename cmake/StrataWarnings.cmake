# Warnings and sanitizers for strata's own targets.
if(STRATA_SANITIZE)
  string(REPLACE "," ";" _strata_sans "${STRATA_SANITIZE}")
  string(REPLACE ";" "," _strata_san_flag "${_strata_sans}")
  add_compile_options($<$<COMPILE_LANGUAGE:CXX,C>:-fsanitize=${_strata_san_flag}> $<$<COMPILE_LANGUAGE:CXX,C>:-fno-omit-frame-pointer>
                      $<$<COMPILE_LANGUAGE:CXX,C>:-fno-sanitize-recover=undefined>)
  add_link_options(-fsanitize=${_strata_san_flag})
endif()

# -Wno-restrict: GCC 12 reports impossible overlaps inside std::string's operator+ (GCC bug 105329).
function(strata_set_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow=local -Wnon-virtual-dtor -Wno-unknown-pragmas -Wno-restrict>)
  # Sanitizer instrumentation defeats GCC's flow analysis: it reports std::function members
  # inside <regex> (pulled in by cxxopts) as maybe-uninitialized. The release build keeps
  # the warning.
  if(STRATA_SANITIZE AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wno-maybe-uninitialized>)
  endif()
  if(STRATA_WERROR)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
  endif()
endfunction()
