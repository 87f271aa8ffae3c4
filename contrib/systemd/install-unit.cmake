# Install-time: blkgw.service with ExecStart= naming the installed binary
# (the prefix is known only now: `cmake --install --prefix`). GW_UNIT_IN and
# GW_BINDIR are set by the install(CODE) before this script.
file(READ "${GW_UNIT_IN}" unit)
if(IS_ABSOLUTE "${GW_BINDIR}")
  set(bindir "${GW_BINDIR}")
else()
  set(bindir "${CMAKE_INSTALL_PREFIX}/${GW_BINDIR}")
endif()
string(REPLACE "@BINDIR@" "${bindir}" unit "${unit}")
set(dest "$ENV{DESTDIR}${CMAKE_INSTALL_PREFIX}/lib/systemd/system")
file(MAKE_DIRECTORY "${dest}")
message(STATUS "Installing: ${dest}/blkgw.service")
file(WRITE "${dest}/blkgw.service" "${unit}")
