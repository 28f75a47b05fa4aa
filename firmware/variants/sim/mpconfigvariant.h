// Variant "sim" of the MicroPython unix port: the simulated board meta1lite's tests
// run on (boards/sim/). Owns: the C configuration that makes the unix port behave like
// a board where it matters for memory: mbedtls allocates from the GC heap (as on rp2
// and stm32), so TLS memory counts against -X heapsize. Must never: enable features a
// Pico W / NUCLEO firmware lacks that the relay could come to depend on.
// Built by firmware/build_firmware.py (make -C ports/unix VARIANT_DIR=<this dir>).

// Set base feature level (as the standard variant).
#define MICROPY_CONFIG_ROM_LEVEL (MICROPY_CONFIG_ROM_LEVEL_EXTRA_FEATURES)

// mbedtls uses m_tracked_calloc/free on the GC heap, as on a bare-metal board.
#define MICROPY_MBEDTLS_CONFIG_BARE_METAL (1)
#define MICROPY_TRACKED_ALLOC (1)

// Floats are 32-bit, as on the Pico W (rp2's MICROPY_FLOAT_IMPL_FLOAT): a float clock
// of seconds since boot keeps whole seconds only after 97 days there, and wall-clock
// seconds as a float round to 128 s. The unix port's doubles would hide both.
#define MICROPY_FLOAT_IMPL (MICROPY_FLOAT_IMPL_FLOAT)

// Enable extra Unix features.
#include "variants/mpconfigvariant_common.h"

// No os.getenv/putenv/unsetenv: no board has them (importing compat failed on a real
// Pico W while the sim had them). The sim's own boot reads /proc/self/environ.
#undef MICROPY_PY_OS_GETENV_PUTENV_UNSETENV
#define MICROPY_PY_OS_GETENV_PUTENV_UNSETENV (0)

// select.poll takes stream objects only, as on every board: the unix port's
// optimisation that polls file descriptors (and takes plain ints) hid a start-up
// that registered ints and failed on rp2 and stm32. With it goes select.select.
#undef MICROPY_PY_SELECT_POSIX_OPTIMISATIONS
#define MICROPY_PY_SELECT_POSIX_OPTIMISATIONS (0)
#undef MICROPY_PY_SELECT_SELECT
#define MICROPY_PY_SELECT_SELECT (1)

// Ctrl-C as a board takes it: a pending KeyboardInterrupt raised between bytecodes.
// The unix port's default (with threads and no GIL) raises it from the SIGINT handler,
// out of whatever C code runs: inside a collection that leaves the heap locked, inside
// an allocation the GC mutex held (the next allocation waits for ever). No board does
// that, and the relay's stop cannot recover from it.
#undef MICROPY_ASYNC_KBD_INTR
#define MICROPY_ASYNC_KBD_INTR (0)
