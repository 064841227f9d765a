# Writes gclip_version.h outside a CMake build, for scripts that compile the
# sources by hand (tests/robust/fuzz.sh): the version is read from project()
# in the top-level CMakeLists.txt, as a configured build has it.
#
#   cmake -DOUTPUT=DIR/gclip_version.h -P cmake/gclip_version_header.cmake
if(NOT OUTPUT)
  message(FATAL_ERROR "usage: cmake -DOUTPUT=FILE -P ${CMAKE_CURRENT_LIST_FILE}")
endif()
get_filename_component(_root "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)
file(READ "${_root}/CMakeLists.txt" _top)
if(NOT _top MATCHES "project\\(gclip[ \t\r\n]+VERSION[ \t\r\n]+([0-9]+)\\.([0-9]+)\\.([0-9]+)")
  message(FATAL_ERROR "no project(gclip VERSION X.Y.Z) in ${_root}/CMakeLists.txt")
endif()
set(PROJECT_VERSION_MAJOR ${CMAKE_MATCH_1})
set(PROJECT_VERSION_MINOR ${CMAKE_MATCH_2})
set(PROJECT_VERSION_PATCH ${CMAKE_MATCH_3})
configure_file("${_root}/include/gclip_version.h.in" "${OUTPUT}" @ONLY)
