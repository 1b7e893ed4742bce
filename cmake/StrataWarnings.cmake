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
  if(STRATA_WERROR)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
  endif()
endfunction()
